import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { closeDb, db } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { getBytes, layout, listObjects, parseS3Uri } from '../../core/s3';
import { submit } from '../../starter/submit';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import { manageProcess, readCsvFromS3, REPO_ROOT, startProcess, tempDir, uniqueName, waitForExperiment, type ManagedProcess } from '../support/harness';
import { createTestNetwork, dropLink, netnsUnavailable, onHost, type TestNetwork } from '../support/netns';
import { dropSecureStack, useSecureStack, withoutStackSettings } from '../support/secure-stack';

/**
 * Workers on separate hosts: the secure stack's services on one address (a bridge), a
 * cellprofiler-pool worker on each of two other "hosts" (network namespaces linked to the bridge by
 * veth pairs, each with its own hostname, work directory and copy of the client certificates, sharing
 * no data path with the starter), everything over mTLS/TLS. Mid-run one host is cut off (its worker
 * killed, its link dropped): the experiment finishes on the other with every image set recorded once.
 */
jest.setTimeout(600_000);

const reason = netnsUnavailable();
const drill = reason === undefined ? it : it.skip;
if (reason !== undefined) console.warn(`multi-host drill skipped: ${reason}`);

let network: TestNetwork | undefined;
let cache: string | undefined;
const processes: ManagedProcess[] = [];

afterAll(async () => {
  for (const p of processes) p.child.kill('SIGKILL');
  await Promise.all(processes.map((p) => p.stop('SIGKILL')));
  await closeDb();
  network?.destroy();
  if (cache) await dropSecureStack(cache);
});

/** A host's private copy of what a pod gets from its Secret: the CA and the client certificate. */
function hostSecrets(hostDir: string, env: NodeJS.ProcessEnv): Record<string, string> {
  const tls = path.join(hostDir, 'tls');
  fs.mkdirSync(tls, { recursive: true, mode: 0o700 });
  const copy = (from: string | undefined, name: string): string => {
    const to = path.join(tls, name);
    fs.copyFileSync(from!, to);
    return to;
  };
  const ca = copy(env.CPFLOW_TEMPORAL_TLS_SERVER_CA_CERT_PATH, 'ca.crt');
  const cert = copy(env.CPFLOW_TEMPORAL_TLS_CLIENT_CERT_PATH, 'client.crt');
  const key = copy(env.CPFLOW_TEMPORAL_TLS_CLIENT_KEY_PATH, 'client.key');
  return {
    CPFLOW_TEMPORAL_TLS_SERVER_CA_CERT_PATH: ca,
    CPFLOW_TEMPORAL_TLS_CLIENT_CERT_PATH: cert,
    CPFLOW_TEMPORAL_TLS_CLIENT_KEY_PATH: key,
    CPFLOW_DB_TLS_CA: ca,
    CPFLOW_DB_TLS_CERT: cert,
    CPFLOW_DB_TLS_KEY: key,
    CPFLOW_S3_TLS_CA: ca,
  };
}

drill('finishes on the remaining host when one is cut off mid-run, every set recorded once', async () => {
  network = createTestNetwork(2);
  const stack = await useSecureStack('multihost', network.servicesAddress);
  cache = stack.cache;
  const env = stack.env;
  Object.assign(process.env, env);
  expect(env.CPFLOW_TEMPORAL_ADDRESS.startsWith(`${network.servicesAddress}:`)).toBe(true);

  // The services host: workflow and reduce pools and the watcher, beside the stack.
  const grace = { CPFLOW_SHUTDOWN_GRACE_SECONDS: '5' };
  const control = [startProcess('workers/workflow.ts', [], grace), startProcess('workers/reduce.ts', [], grace), startProcess('starter/cli.ts', ['watch', '--interval', '500'])];
  processes.push(...control);

  // The worker hosts: own namespace, hostname, work directory and certificate copies.
  const root = tempDir('multihost');
  const workers = network.hosts.map((host) => {
    const hostDir = path.join(root, host.name);
    fs.mkdirSync(path.join(hostDir, 'work'), { recursive: true });
    const hostEnv = {
      ...withoutStackSettings(process.env),
      ...Object.fromEntries(Object.entries(env).filter(([key]) => /^CPFLOW_(TEMPORAL|DB|S3)_/.test(key))),
      ...hostSecrets(hostDir, { ...env }),
      HOME: hostDir,
      TMPDIR: path.join(hostDir, 'work'),
      CPFLOW_WORK_DIR: path.join(hostDir, 'work'),
      CPFLOW_ANALYZE_SLOTS: '2',
      CPFLOW_SHUTDOWN_GRACE_SECONDS: '5',
    };
    const argv = onHost(host, [process.execPath, '--import', 'tsx', path.join(REPO_ROOT, 'workers', 'cellprofiler.ts')]);
    const child = spawn(argv[0]!, argv.slice(1), { cwd: REPO_ROOT, env: hostEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    const managed = manageProcess(child, `worker on ${host.name}`, host.name);
    processes.push(managed);
    return { host, managed, hostDir };
  });
  await Promise.all([...control.map((p, i) => p.waitFor(i === 2 ? /polling MariaDB/ : /cpflow workers running/, 120_000)), ...workers.map((w) => w.managed.waitFor(/cpflow workers running: cellprofiler/, 120_000))]);
  for (const w of workers) expect(w.managed.output()).toMatch(/mTLS/);

  const plate = path.join(root, 'plate');
  await generateSyntheticPlate({ outDir: plate, rows: 3, cols: 4, sites: 2, size: 512, seed: 7 });
  fs.rmSync(path.join(plate, 'ground-truth.json'));
  const { experimentId, bucket } = await submit({ project: uniqueName('multihost'), name: 'two-hosts', folder: plate, grouping: GROUPING_PRESETS.synthetic!.rule, engine: 'builtin',
    // One set per activity, so both hosts take sets from the start and the cut host has finished
    // some and holds others (adaptive batching would hand a 24-set plate out in a few large batches).
    dispatch: { batchSize: 1 } });
  const total = 24;
  const pool = await db();
  // Done as S3 sees it, set by set (MariaDB's mirror is written in batches, so it can jump to all 24
  // at once), with the host each provenance.json names.
  const hostOf = new Map<string, string>();
  const doneCount = async (): Promise<number> => {
    let n = 0;
    for await (const o of listObjects(bucket, `${layout.experimentRoot(experimentId)}sets/`)) {
      if (!o.key.endsWith('/provenance.json')) continue;
      n++;
      if (!hostOf.has(o.key)) hostOf.set(o.key, (JSON.parse((await getBytes(bucket, o.key)).toString('utf8')) as { worker: { host: string } }).worker.host);
    }
    return n;
  };

  // Both hosts take work: cut host 1 once each host has finished a set (a count of finished sets alone
  // can be reached by host 2 before host 1's first set is done), while host 1 still has sets in hand.
  for (let i = 0; i < 1200 && (await doneCount()) < total && new Set(hostOf.values()).size < 2; i++) await new Promise((r) => setTimeout(r, 100));
  const [cut, survivor] = workers;
  process.kill(cut!.managed.child.pid!, 'SIGKILL');
  dropLink(cut!.host.hostVeth);
  const doneAtCut = await doneCount();
  expect(doneAtCut).toBeLessThan(total);

  const e = await waitForExperiment(experimentId, undefined, 300_000);
  expect(e.status).toBe('done');
  const sets = await pool.query<Array<{ id: number; set_key: string; status: string }>>('SELECT id, set_key, status FROM image_set WHERE experiment_id = ?', [experimentId]);
  expect(sets).toHaveLength(total);
  expect(sets.filter((s) => s.status !== 'done')).toEqual([]);
  // Exactly one provenance record per set in MariaDB, and one summary row per set.
  const markers = await pool.query<Array<{ image_set_id: number; n: number }>>(
    "SELECT image_set_id, COUNT(*) AS n FROM result_file WHERE kind = 'provenance' AND image_set_id IN (?) GROUP BY image_set_id",
    [sets.map((s) => s.id)],
  );
  expect(markers).toHaveLength(total);
  expect(markers.filter((m) => m.n !== 1)).toEqual([]);
  const summary = await readCsvFromS3(e.summary_uri!);
  expect(summary).toHaveLength(total);
  expect(new Set(summary.map((r) => r.ImageSet_Key)).size).toBe(total);

  // Who did the work: provenance.json names each set's worker host.
  const hosts = new Map<string, number>();
  for (const row of await pool.query<Array<{ uri: string }>>("SELECT uri FROM result_file WHERE kind = 'provenance' AND image_set_id IN (?)", [sets.map((s) => s.id)])) {
    const { bucket, key } = parseS3Uri(row.uri);
    const provenance = JSON.parse((await getBytes(bucket, key)).toString('utf8')) as { worker: { host: string } };
    hosts.set(provenance.worker.host, (hosts.get(provenance.worker.host) ?? 0) + 1);
  }
  expect([...hosts.keys()].sort()).toEqual(['cpflow-host-1', 'cpflow-host-2']);
  expect(hosts.get('cpflow-host-2')).toBeGreaterThanOrEqual(total - doneAtCut);
  // The survivor's work directory is its own and left clean; the cut host's is untouched by anyone else.
  expect(fs.readdirSync(path.join(survivor!.hostDir, 'work')).filter((f) => f.startsWith('cpflow-'))).toEqual([]);
});
