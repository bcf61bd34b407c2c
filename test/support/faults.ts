import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { db, getExperiment, imageSetCounts, type ExperimentRow } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { getBytes, layout, listObjects } from '../../core/s3';
import { provenanceSchema } from '../../activities/provenance';
import { submit } from '../../starter/submit';
import { generateSyntheticPlate, type SyntheticSet } from '../fixtures/synthetic-plate';
import { workflowIdFor } from '../../core/model/names';
import { cacheDir, ensureStackUp, stopStack, type StackEnv } from '../../deploy/local/services';
import { preparePrivateStack } from '../bench/isolation';
import { readCsvFromS3, s3Keys, startProcess, tempDir, type ManagedProcess } from './harness';

/**
 * Helpers for the fault drills (test/integration/faults.test.ts): worker pools as separate,
 * killable processes, progress read from S3 (which keeps working while MariaDB is down), and the
 * checks every drill ends with.
 */

/** Files the builtin engine writes per image set, plus the done marker. */
export const SET_FILES = ['Experiment.csv', 'Image.csv', 'Nuclei.csv', 'provenance.json'] as const;

/**
 * Move this test process (and every process it starts) onto a local stack of its own, under
 * `<cache dir>-faults`, reusing the shared stack's installed binaries. The drills stop Temporal,
 * MariaDB and MinIO: on the shared stack that would break integration files running beside them, and
 * their workers and watchers would take the drills' tasks and experiments. Call before any db()/s3().
 */
export async function usePrivateStack(): Promise<StackEnv> {
  const shared = cacheDir();
  const own = `${shared.replace(/\/+$/, '')}-faults`;
  preparePrivateStack(shared, own);
  process.env.CPFLOW_CACHE_DIR = own;
  const env = await ensureStackUp({ quiet: true });
  Object.assign(process.env, env);
  return env;
}

/** Stop the private stack's services (its data stays for a post-mortem and a faster next start). */
export async function stopPrivateStack(): Promise<void> {
  if (!process.env.CPFLOW_CACHE_DIR?.endsWith('-faults')) return;
  await stopStack({ quiet: true });
}

/** Where the drill processes' output goes (also kept in memory), to read after a failed drill. */
export const DRILL_LOG_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-fault-logs-'));

/** A drill process: one node process (harness.startProcess), its output also kept in DRILL_LOG_DIR. */
export function startNodeProcess(entry: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): ManagedProcess {
  return startProcess(entry, args, env, { logDir: DRILL_LOG_DIR });
}

/** Drill settings for every process: enough analysis slots for the window (default is one per core). */
export const DRILL_WINDOW = 16;
const ANALYZE_SLOTS = 8;

export async function startPool(pool: 'workflow' | 'cellprofiler' | 'reduce'): Promise<ManagedProcess> {
  const p = startNodeProcess(`workers/${pool}.ts`, [], {
    CPFLOW_ANALYZE_SLOTS: String(ANALYZE_SLOTS),
    // A SIGTERM at teardown should not wait a minute for in-flight sets.
    CPFLOW_SHUTDOWN_GRACE_SECONDS: '5',
  });
  await p.waitFor(/cpflow workers running/, 180_000);
  return p;
}

export async function startDrillWatcher(): Promise<ManagedProcess> {
  const p = startNodeProcess('starter/cli.ts', ['watch', '--interval', '500']);
  await p.waitFor(/polling MariaDB/, 60_000);
  return p;
}

/** The process' pid, asserting it runs. */
export function pidOf(p: ManagedProcess): number {
  const pid = p.child.pid;
  if (pid === undefined || p.child.exitCode !== null || p.child.signalCode !== null) throw new Error('process is not running');
  return pid;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll `probe` until it returns a value that is not undefined; errors of one probe count as "not yet". */
export async function waitUntil<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const why = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await sleep(everyMs);
  }
}

export interface DrillPlate {
  dir: string;
  sets: SyntheticSet[];
  /** s3:// prefix of the inputs once the first experiment uploaded them (later ones reuse them). */
  inputsPrefix?: string;
}

/** A plate of `rows × cols × sites` small image sets (64 px: a few ms of engine time each). */
export async function makeDrillPlate(rows: number, cols: number, sites: number): Promise<DrillPlate> {
  const dir = tempDir('fault-plate');
  const truth = await generateSyntheticPlate({ outDir: dir, rows, cols, sites, size: 64, seed: 3 });
  fs.rmSync(path.join(dir, 'ground-truth.json'), { force: true });
  return { dir, sets: truth.sets };
}

/**
 * Register a new experiment over the plate. The first one uploads the files; later ones point at the
 * same objects (`--s3-prefix`), so a drill spends its time on the drill, not on uploads.
 */
/**
 * `batching`: 'adaptive' (cpflow's default) or 'per-set' (--batch-size 1). Outage drills use per-set:
 * sets then finish one by one, so "mid-run" is a moment that exists (adaptive batches of 64 small sets
 * finish the plate in a few waves); the kill drill runs adaptive, so batches are drilled too.
 */
export async function submitDrill(project: string, name: string, plate: DrillPlate, batching: 'adaptive' | 'per-set' = 'per-set'): Promise<ExperimentRow> {
  const res = await submit({
    project,
    name,
    ...(plate.inputsPrefix ? { s3Prefix: plate.inputsPrefix } : { folder: plate.dir }),
    grouping: GROUPING_PRESETS.synthetic!.rule,
    engine: 'builtin',
    dispatch: { window: DRILL_WINDOW, ...(batching === 'per-set' ? { batchSize: 1 } : {}) },
  });
  const e = await getExperiment(await db(), res.experimentId);
  if (!e) throw new Error(`experiment ${res.experimentId} vanished after submit`);
  plate.inputsPrefix ??= e.input_prefix;
  return e;
}

/** Done markers (provenance.json) under the experiment's set prefix, key → ETag (a rewrite changes it). */
export async function provenanceMarkers(bucket: string, experimentId: number): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const o of listObjects(bucket, `${layout.experimentRoot(experimentId)}sets/`)) {
    if (o.key.endsWith('/provenance.json')) out.set(o.key, o.etag);
  }
  return out;
}

/**
 * Keys of the provenance.json records whose set finished after `instant` (their `finishedAt`, stamped
 * by the worker before it writes the record). A record the worker sent just before it was killed can
 * land in S3 a moment later; it still finished before the kill.
 */
export async function provenanceFinishedAfter(bucket: string, experimentId: number, instant: number): Promise<string[]> {
  const late: string[] = [];
  for (const key of (await provenanceMarkers(bucket, experimentId)).keys()) {
    const { finishedAt } = provenanceSchema.parse(JSON.parse((await getBytes(bucket, key)).toString('utf8')));
    if (Date.parse(finishedAt) > instant) late.push(`${key} (finished ${finishedAt})`);
  }
  return late;
}

/** How many sets are done as S3 sees it (true also while MariaDB is down). */
export async function provenanceCount(bucket: string, experimentId: number): Promise<number> {
  return (await provenanceMarkers(bucket, experimentId)).size;
}

export async function doneCount(experimentId: number): Promise<number> {
  return (await imageSetCounts(await db(), experimentId)).done;
}

/** Wait until `min` sets are done according to S3 (true also during a MariaDB outage). */
export async function waitForSetsInS3(e: ExperimentRow, min: number, timeoutMs = 180_000): Promise<number> {
  return waitUntil(`${min} done sets of experiment ${e.id} in S3`, async () => {
    const n = await provenanceCount(e.bucket, e.id);
    return n >= min ? n : undefined;
  }, timeoutMs, 200);
}

/** Every execution Temporal has of the experiment's workflow id (each run, including closed ones). */
export async function workflowExecutions(client: Client, experimentId: number): Promise<Array<{ runId: string; status: string }>> {
  const out: Array<{ runId: string; status: string }> = [];
  for await (const w of client.workflow.list({ query: `WorkflowId = '${workflowIdFor(experimentId)}'` })) {
    out.push({ runId: w.runId, status: w.status.name });
  }
  return out;
}

/**
 * Analysis activities that the worker process `pid` is executing right now (started, not finished),
 * across the experiment's running chunk workflows. Workers identify themselves as `<pid>@<host>`.
 */
export async function activitiesRunningOn(client: Client, experimentId: number, pid: number): Promise<number> {
  let n = 0;
  const query = `WorkflowId STARTS_WITH '${workflowIdFor(experimentId)}-chunk' AND ExecutionStatus = 'Running'`;
  for await (const w of client.workflow.list({ query })) {
    const d = await client.workflow.getHandle(w.workflowId).describe();
    for (const a of d.raw.pendingActivities ?? []) {
      const started = a.state === temporal.api.enums.v1.PendingActivityState.PENDING_ACTIVITY_STATE_STARTED;
      if (started && a.lastWorkerIdentity?.startsWith(`${pid}@`)) n++;
    }
  }
  return n;
}

export interface CleanFinish {
  experiment: ExperimentRow;
  /** Sets per result kind, keyed by image_set_id, for callers that check more. */
  resultRowsPerSet: Map<number, number>;
}

/**
 * The checks every drill ends with: status `done` with every set done once; exactly four result rows
 * per set (Experiment, Image, Nuclei tables and provenance) and no duplicates; summary.csv with one
 * row per set; and under `cpflow/<id>/sets/` exactly the expected objects, nothing missing, nothing extra.
 */
export async function expectCleanFinish(experimentId: number, sets: SyntheticSet[]): Promise<CleanFinish> {
  const pool = await db();
  const e = await getExperiment(pool, experimentId);
  expect(e?.status).toBe('done');
  const experiment = e!;
  expect({ total: experiment.total_sets, done: experiment.done_sets, failed: experiment.failed_sets }).toEqual({
    total: sets.length,
    done: sets.length,
    failed: 0,
  });
  expect(await imageSetCounts(pool, experimentId)).toMatchObject({ total: sets.length, done: sets.length, failed: 0, pending: 0, running: 0, cancelled: 0 });

  const rows = await pool.query<Array<{ image_set_id: number; kind: string; uri: string }>>(
    'SELECT image_set_id, kind, uri FROM result_file WHERE experiment_id = ? AND image_set_id IS NOT NULL',
    [experimentId],
  );
  const resultRowsPerSet = new Map<number, number>();
  for (const r of rows) resultRowsPerSet.set(r.image_set_id, (resultRowsPerSet.get(r.image_set_id) ?? 0) + 1);
  expect(resultRowsPerSet.size).toBe(sets.length);
  expect([...resultRowsPerSet.values()].filter((n) => n !== SET_FILES.length)).toEqual([]);
  const kindsPerSet = new Map<number, string[]>();
  for (const r of rows) kindsPerSet.set(r.image_set_id, [...(kindsPerSet.get(r.image_set_id) ?? []), r.kind]);
  const expectedKinds = ['provenance', 'table:Experiment', 'table:Image', 'table:Nuclei'];
  expect([...kindsPerSet.values()].filter((k) => k.sort().join() !== expectedKinds.join())).toEqual([]);
  expect(new Set(rows.map((r) => r.uri)).size).toBe(rows.length);

  const summary = await readCsvFromS3(experiment.summary_uri!);
  expect(summary).toHaveLength(sets.length);
  expect(new Set(summary.map((r) => r.ImageSet_Key))).toEqual(new Set(sets.map((s) => s.key)));
  expect(summary.filter((r) => r.Status !== 'done').map((r) => r.ImageSet_Key)).toEqual([]);

  const keys = await s3Keys(`s3://${experiment.bucket}/${layout.experimentRoot(experimentId)}sets/`);
  const expected = sets.flatMap((s) => SET_FILES.map((f) => `${layout.setPrefix(experimentId, s.key)}${f}`)).sort();
  expect({ missing: expected.filter((k) => !keys.includes(k)), extra: keys.filter((k) => !expected.includes(k)) }).toEqual({
    missing: [],
    extra: [],
  });
  expect(keys).toHaveLength(expected.length);
  // The recorded URIs are exactly the stored objects.
  expect(rows.map((r) => r.uri).sort()).toEqual(expected.map((k) => `s3://${experiment.bucket}/${k}`));
  return { experiment, resultRowsPerSet };
}
