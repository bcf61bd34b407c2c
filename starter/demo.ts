import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Presets, SingleBar } from 'cli-progress';
import { parseCsvObjects } from '../core/csv';
import { ensureStackUp } from '../deploy/local/services';
import { ensureWorkflowBundle } from '../workers/workflow-bundle';
import { demoPlatemap, printProfiles, startProfilesInstall } from './demo-profiles';

/**
 * `npm run demo`: the whole of cpflow on a fresh machine. Installs and starts the local stack,
 * generates a small synthetic plate with known nucleus counts, submits it, runs the watcher and the
 * workers, follows the run, then prints where the summary and report are and how they compare with
 * the ground truth.
 */

const TSX_CLI = require.resolve('tsx/cli');
const ROOT = path.resolve(__dirname, '..');

function startChild(name: string, args: string[], logFile: string): ChildProcess {
  const log = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [TSX_CLI, ...args], { cwd: ROOT, env: process.env, stdio: ['ignore', log, log] });
  child.once('exit', (code, signal) => {
    if (code !== 0 && signal === null && !stopping) {
      console.error(`\n${name} exited with code ${code}; see ${logFile}`);
      process.exit(1);
    }
  });
  return child;
}

let stopping = false;

async function main(): Promise<void> {
  const started = Date.now();
  console.log('cpflow demo: starting the local stack (Temporal, MariaDB, MinIO; first run installs them)…');
  const cache = process.env.CPFLOW_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'cpflow');
  // The profiling venv (CytoTable, pycytominer) installs beside the stack, not after it.
  const profiles = startProfilesInstall(cache);
  const env = await ensureStackUp();
  Object.assign(process.env, env, profiles.env);
  await ensureWorkflowBundle((line) => console.log(line));

  // Loaded after the environment is set: their configuration is read from it.
  const { db, getExperiment, imageSetCounts, closeDb } = await import('../core/db');
  const { isTerminal } = await import('../core/model');
  const { GROUPING_PRESETS } = await import('../core/grouping');
  const { downloadToFile, parseS3Uri } = await import('../core/s3');
  const { submit } = await import('./submit');
  const { generateSyntheticPlate } = await import('../test/fixtures/synthetic-plate');
  const { webUiLink } = await import('../core/config');

  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-demo-'));
  const plateDir = path.join(runDir, 'plate');
  const platemap = demoPlatemap(runDir);
  const truth = await generateSyntheticPlate({ outDir: plateDir, plate: 'DEMO1', rows: 4, cols: 4, sites: 1, seed: 2026, wellEffects: platemap.wellEffects });
  fs.renameSync(path.join(plateDir, 'ground-truth.json'), path.join(runDir, 'ground-truth.json'));
  console.log(`generated ${truth.sets.length} image sets (${truth.channels.join(' + ')}, ${truth.size}×${truth.size}) in ${plateDir}`);
  console.log(`platemap ${platemap.file}: ${platemap.description}`);

  const logDir = path.join(cache, 'logs');
  fs.mkdirSync(logDir, { recursive: true });
  const workers = startChild('workers', ['workers/all.ts'], path.join(logDir, 'demo-workers.log'));
  const watcher = startChild('watcher', ['starter/cli.ts', 'watch', '--interval', '1000'], path.join(logDir, 'demo-watcher.log'));
  const stopAll = async (): Promise<void> => {
    stopping = true;
    await Promise.all(
      [workers, watcher].map(
        (c) => new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          c.once('exit', () => resolve());
          c.kill('SIGTERM');
        }),
      ),
    );
  };
  process.once('SIGINT', () => void stopAll().then(() => process.exit(130)));

  try {
    const profilesReady = await profiles.ready;
    if (!profilesReady.ok) console.log(`profiles skipped: ${profilesReady.reason}`);
    const submitted = await submit({
      project: 'demo',
      name: `synthetic-${new Date().toISOString().replace(/[:.]/g, '-')}`,
      folder: plateDir,
      grouping: GROUPING_PRESETS.synthetic!.rule,
      engine: 'builtin',
      progress: process.stderr.isTTY,
      ...(profilesReady.ok ? { platemap: { file: platemap.file } } : {}),
    });
    const id = submitted.experimentId;
    console.log(`submitted experiment ${id} (${submitted.project}/${submitted.name}) with the builtin engine; the watcher starts it`);

    const pool = await db();
    const bar = new SingleBar({ format: 'analysing {bar} {value}/{total} image sets | {status}', hideCursor: true }, Presets.shades_classic);
    bar.start(truth.sets.length, 0, { status: 'submitted' });
    let e = await getExperiment(pool, id);
    const deadline = Date.now() + 15 * 60_000;
    while (e && !isTerminal(e.status)) {
      if (Date.now() > deadline) throw new Error(`experiment ${id} did not finish within 15 minutes (status ${e.status})`);
      await new Promise((r) => setTimeout(r, 500));
      const counts = await imageSetCounts(pool, id);
      e = await getExperiment(pool, id);
      bar.update(counts.done + counts.failed, { status: e?.status ?? '?' });
    }
    bar.stop();
    if (!e) throw new Error(`experiment ${id} vanished`);

    const outDir = path.join(runDir, 'results');
    fs.mkdirSync(outDir, { recursive: true });
    const local: Record<string, string> = {};
    for (const [name, uri] of [['summary.csv', e.summary_uri], ['report.html', e.report_uri]] as const) {
      if (!uri) continue;
      const { bucket, key } = parseS3Uri(uri);
      local[name] = path.join(outDir, name);
      await downloadToFile(bucket, key, local[name]!);
    }
    let matches = 0;
    if (local['summary.csv']) {
      const rows = parseCsvObjects(fs.readFileSync(local['summary.csv']!, 'utf8'));
      for (const set of truth.sets) {
        const row = rows.find((r) => r.ImageSet_Key === set.key);
        if (row && Number(row.Count_Nuclei) === set.nucleusCount) matches++;
      }
    }
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    console.log('');
    console.log(`experiment ${id}: ${e.status} — ${e.done_sets} of ${e.total_sets} image sets done, ${e.failed_sets} failed`);
    console.log(`nucleus counts equal to the ground truth in ${matches} of ${truth.sets.length} image sets`);
    console.log(`summary:  ${e.summary_uri}\n          ${local['summary.csv'] ?? '(not downloaded)'}`);
    console.log(`report:   ${e.report_uri}\n          ${local['report.html'] ?? '(not downloaded)'}`);
    if (profilesReady.ok) await printProfiles(id, path.join(runDir, 'results'));
    console.log(`Temporal Web UI: ${webUiLink(e.workflow_id ?? `experiment-${id}`) ?? '(UI URL unknown)'}`);
    console.log(`demo wall time: ${seconds} s (the stack keeps running: \`npm run stack -- down\` stops it)`);
    await closeDb();
    if (e.status !== 'done') process.exitCode = 1;
  } finally {
    await stopAll();
  }
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (err: unknown) => {
    console.error(`cpflow demo: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
