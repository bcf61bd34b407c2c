import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { msToTs } from '@temporalio/common/lib/time';
import { migrateScratchDatabase, TEMPORAL_SEARCH_ATTRIBUTES, type StackEnv } from '../../deploy/local/services';

/**
 * The benchmark shares the local stack with tests and demos that may run at the same time. Its own
 * MariaDB database and Temporal namespace keep it apart: no other watcher claims its experiments, no
 * other worker takes its tasks (task queues are per namespace), and its no-op worker never serves
 * anyone else's image sets. Only the machine's CPU and the service processes are shared.
 */

export const BENCH_DATABASE = 'cpflow_bench';
export const BENCH_NAMESPACE = 'cpflow-bench';

/** Created and migrated by the stack's migration account; the runtime account only reads and writes rows. */
export async function ensureBenchDatabase(_env: StackEnv, name = BENCH_DATABASE): Promise<void> {
  await migrateScratchDatabase(name);
}

const SEARCH_ATTRIBUTE_TYPES: Record<string, temporal.api.enums.v1.IndexedValueType> = {
  Keyword: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
  Int: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_INT,
};

/** Register the namespace (once) with cpflow's custom search attributes, and wait until it serves. */
export async function ensureBenchNamespace(env: StackEnv, namespace = BENCH_NAMESPACE): Promise<void> {
  const connection = await Connection.connect({ address: env.CPFLOW_TEMPORAL_ADDRESS });
  try {
    const exists = await connection.workflowService.describeNamespace({ namespace }).then(
      () => true,
      () => false,
    );
    if (!exists) {
      await connection.workflowService.registerNamespace({
        namespace,
        description: 'cpflow benchmark runs (test/bench)',
        workflowExecutionRetentionPeriod: msToTs('1 day'),
      });
    }
    const searchAttributes: Record<string, temporal.api.enums.v1.IndexedValueType> = {};
    for (const [name, type] of Object.entries(TEMPORAL_SEARCH_ATTRIBUTES)) {
      const indexed = SEARCH_ATTRIBUTE_TYPES[type];
      if (indexed === undefined) throw new Error(`unknown search attribute type ${type}`);
      searchAttributes[name] = indexed;
    }
    // A new namespace reaches the frontend's cache within seconds.
    const registered = Date.now();
    for (;;) {
      try {
        await connection.operatorService.listSearchAttributes({ namespace });
        break;
      } catch (err) {
        if (Date.now() - registered > 60_000) throw err;
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
    const listed = await connection.operatorService.listSearchAttributes({ namespace });
    const missing = Object.keys(searchAttributes).filter((n) => !(n in (listed.customAttributes ?? {})));
    if (missing.length > 0) {
      await connection.operatorService.addSearchAttributes({
        namespace,
        searchAttributes: Object.fromEntries(missing.map((n) => [n, searchAttributes[n]])),
      });
    }
    // Added search attributes take a moment too: wait until a query naming one of them works.
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        await connection.workflowService.listWorkflowExecutions({ namespace, pageSize: 1, query: `CpflowExperimentId = '0'` });
        return;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  } finally {
    await connection.close();
  }
}

/**
 * A second local stack for the benchmark alone (`--private-stack`), under its own cache directory, so
 * fault drills that stop the shared services cannot disturb a measurement. The binaries the shared
 * stack already installed are reused by seeding the new stack's state file with their paths (and no
 * running services, so deploy/local picks free ports and initialises fresh data directories).
 */
export function preparePrivateStack(sharedCacheDir: string, privateCacheDir: string): void {
  const privateState = path.join(privateCacheDir, 'stack', 'state.json');
  if (fs.existsSync(privateState)) return;
  const sharedState = path.join(sharedCacheDir, 'stack', 'state.json');
  if (!fs.existsSync(sharedState)) return; // nothing to reuse: deploy/local installs from scratch
  const shared = z
    .object({ binaries: z.record(z.string(), z.string()), temporal: z.record(z.string(), z.unknown()), mariadb: z.record(z.string(), z.unknown()), minio: z.record(z.string(), z.unknown()) })
    .passthrough()
    .parse(JSON.parse(fs.readFileSync(sharedState, 'utf8')));
  const seeded = {
    ...shared,
    temporal: { ...shared.temporal, pid: null },
    mariadb: { ...shared.mariadb, pid: null },
    minio: { ...shared.minio, pid: null },
  };
  fs.mkdirSync(path.dirname(privateState), { recursive: true });
  fs.writeFileSync(privateState, JSON.stringify(seeded, null, 2));
}
