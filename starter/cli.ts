import fs from 'node:fs';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { Presets, SingleBar } from 'cli-progress';
import { z } from 'zod';
import { ConfigError, dbConfig, s3Config, temporalConfig, workerConfig } from '../activities/lib/config';
import {
  DatabaseUnavailableError,
  EXPERIMENT_STATUSES,
  TERMINAL_STATUSES,
  closeDb,
  db,
  findExperimentByName,
  getExperiment,
  imageSetCounts,
  listExperiments,
  resetFailedImageSets,
  setExperimentSealed,
  type ExperimentRow,
} from '../activities/lib/db';
import { GROUPING_PRESETS, GroupingError, resolveGroupingRule } from '../activities/lib/grouping';
import { downloadToFile, ensureBucket, parseS3Uri, s3Endpoint } from '../activities/lib/s3';
import { PipelineError } from '../activities/pipeline/cppipe';
import { progressQuery, sealedSignal, type ExperimentProgress } from '../workflows/progress';
import { workflowIdFor } from '../workflows/task-queues';
import { SubmitError, submit } from './submit';
import { TemporalUnreachableError, connectClient, webUiLink } from './temporal';
import { Watcher } from './watch';
import { analyzeLocal } from './analyze-local';
import { cellProfilerDoctorCheck } from './doctor-cellprofiler';

/** `cpflow`: the starter CLI. Every failure ends in one line naming what is wrong and a non-zero exit. */

class UsageError extends Error {}

const intArg = (name: string, min = 1) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}, got "${v}"`);
  return n;
};
const fractionArg = (v: string): number => {
  const n = Number(v);
  if (!(n >= 0 && n <= 1)) throw new InvalidArgumentError(`must be a number from 0 to 1, got "${v}"`);
  return n;
};

/** `12`, or `project/name`. */
async function resolveExperiment(ref: string): Promise<ExperimentRow> {
  const pool = await db();
  let e: ExperimentRow | undefined;
  if (/^\d+$/.test(ref)) e = await getExperiment(pool, Number(ref));
  else {
    const m = /^([^/]+)\/(.+)$/.exec(ref);
    if (!m || !m[1] || !m[2]) throw new UsageError(`experiment "${ref}": give its id or <project>/<name>`);
    e = await findExperimentByName(pool, m[1], m[2]);
  }
  if (!e) throw new UsageError(`experiment "${ref}" does not exist`);
  return e;
}

function print(json: boolean, value: unknown, text: () => string): void {
  console.log(json ? JSON.stringify(value, null, 2) : text());
}

async function queryProgress(workflowId: string): Promise<ExperimentProgress | undefined> {
  const client = await connectClient();
  try {
    return await client.workflow.getHandle(workflowId).query(progressQuery);
  } catch {
    return undefined; // finished or not started: MariaDB has the record
  } finally {
    await client.connection.close();
  }
}

const program = new Command()
  .name('cpflow')
  .description('Durable CellProfiler runs on Temporal, MariaDB and S3')
  .showHelpAfterError(false)
  .configureOutput({ writeErr: (s) => process.stderr.write(s) })
  .exitOverride();

program
  .command('submit')
  .description('register an experiment from a local folder or an S3 prefix')
  .requiredOption('--project <name>', 'project (one S3 bucket per project; created if new)')
  .requiredOption('--name <name>', 'experiment name, unique within the project')
  .option('--folder <dir>', 'local folder of images to upload')
  .option('--s3-prefix <uri>', 'images already in S3, e.g. s3://bucket/plate1/')
  .option('--pipeline <file>', 'CellProfiler pipeline (.cppipe); required for the cellprofiler engine')
  .requiredOption('--grouping <rule>', `preset (${Object.keys(GROUPING_PRESETS).join(', ')}), a regex with named groups, or a JSON rule`)
  .option('--channel-map <map>', 'raw channel → pipeline name, e.g. d0=DNA,d1=PH3')
  .addOption(new Option('--engine <engine>', 'analysis engine').choices(['auto', 'builtin', 'cellprofiler']).default('auto'))
  .option('--batch-size <n>', 'image sets per engine invocation', intArg('--batch-size'), 1)
  .option('--bucket <bucket>', 'bucket for a new project (default cpflow-<project>)')
  .option('--open', 'accept more image sets later (seal with `cpflow seal`)', false)
  .option('--append', 'add image sets to an open experiment', false)
  .option('--max-failed-fraction <f>', 'above this fraction of failed sets the experiment is failed', fractionArg, 0.5)
  .option('--json', 'machine-readable output', false)
  .action(async (o: {
    project: string; name: string; folder?: string; s3Prefix?: string; pipeline?: string; grouping: string;
    channelMap?: string; engine: 'auto' | 'builtin' | 'cellprofiler'; batchSize: number; bucket?: string;
    open: boolean; append: boolean; maxFailedFraction: number; json: boolean;
  }) => {
    const channelMap: Record<string, string> = {};
    for (const pair of (o.channelMap ?? '').split(',').filter(Boolean)) {
      const [k, v] = pair.split('=');
      if (!k || !v) throw new UsageError(`--channel-map: "${pair}" is not raw=Name`);
      channelMap[k] = v;
    }
    const result = await submit({
      project: o.project,
      bucket: o.bucket,
      name: o.name,
      folder: o.folder,
      s3Prefix: o.s3Prefix,
      pipelineFile: o.pipeline,
      grouping: resolveGroupingRule(o.grouping, channelMap),
      engine: o.engine,
      engineOptions: { batchSize: o.batchSize },
      open: o.open,
      append: o.append,
      maxFailedFraction: o.maxFailedFraction,
      progress: !o.json && process.stderr.isTTY,
    });
    if (result.appended) {
      const client = await connectClient();
      try {
        // The watcher would notice too; signalling now just saves its poll interval.
        const { imageSetsAddedSignal } = await import('../workflows/progress');
        await client.workflow.getHandle(workflowIdFor(result.experimentId)).signal(imageSetsAddedSignal).catch(() => undefined);
      } finally {
        await client.connection.close();
      }
    }
    print(o.json, result, () =>
      [
        `${result.appended ? 'appended' : 'submitted'} experiment ${result.experimentId} (${result.project}/${result.name}): ` +
          `${result.imageSets} image sets, channels ${result.channels.join(', ')}, engine ${result.engine}`,
        ...(result.unmatched.length ? [`note: ${result.unmatched.length} files matched no image set (first: ${result.unmatched[0]})`] : []),
      ].join('\n'),
    );
  });

program
  .command('watch')
  .description('start workflows for submitted experiments (the starter daemon)')
  .option('--interval <ms>', 'poll interval', intArg('--interval', 100), 2000)
  .option('--once', 'one pass, then exit', false)
  .option('--window <n>', 'image sets in flight per experiment', intArg('--window'))
  .action(async (o: { interval: number; once: boolean; window?: number }) => {
    const client = await connectClient();
    const watcher = new Watcher(client, { window: o.window }, (e) =>
      console.log(`${new Date().toISOString()} experiment ${e.experimentId}: ${e.kind}${e.detail ? ` (${e.detail})` : ''}`),
    );
    try {
      if (o.once) {
        await watcher.tick();
        return;
      }
      const stop = new AbortController();
      for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => stop.abort());
      console.log(`cpflow watch: polling MariaDB every ${o.interval} ms (pid ${process.pid})`);
      await watcher.run(o.interval, stop.signal, (err) => console.error(`cpflow watch: ${describeError(err)}`));
    } finally {
      await client.connection.close();
    }
  });

program
  .command('status <experiment>')
  .description('progress of an experiment (id or project/name)')
  .option('--follow', 'live progress bar until it ends', false)
  .option('--json', 'machine-readable output', false)
  .action(async (ref: string, o: { follow: boolean; json: boolean }) => {
    const snapshot = async () => {
      const e = await resolveExperiment(ref);
      const counts = await imageSetCounts(await db(), e.id);
      const workflowId = e.workflow_id ?? workflowIdFor(e.id);
      const progress = TERMINAL_STATUSES.includes(e.status) ? undefined : await queryProgress(workflowId);
      return { experiment: e, counts, progress, webUi: webUiLink(workflowId) };
    };
    let s = await snapshot();
    const line = (x: typeof s): string => {
      const done = Math.max(x.counts.done, x.progress?.done ?? 0);
      const failed = Math.max(x.counts.failed, x.progress?.failed ?? 0);
      return `experiment ${x.experiment.id} ${x.experiment.project_name}/${x.experiment.name}: ${x.experiment.status}` +
        `${x.progress ? ` (${x.progress.phase})` : ''} — ${done} done, ${failed} failed, ` +
        `${x.progress?.running ?? 0} running of ${x.counts.total}` +
        (x.experiment.error ? `\n  error: ${x.experiment.error}` : '') +
        (x.experiment.report_uri ? `\n  report: ${x.experiment.report_uri}` : '') +
        (x.webUi ? `\n  Temporal Web UI: ${x.webUi}` : '');
    };
    if (!o.follow) {
      print(o.json, s, () => line(s));
      return;
    }
    const bar = new SingleBar(
      { format: '{bar} {percentage}% | {value}/{total} sets | {failed} failed | {phase}', hideCursor: true },
      Presets.shades_classic,
    );
    bar.start(Math.max(1, s.counts.total), 0, { failed: 0, phase: s.experiment.status });
    while (!TERMINAL_STATUSES.includes(s.experiment.status)) {
      await new Promise((r) => setTimeout(r, 1000));
      s = await snapshot();
      const done = Math.max(s.counts.done, s.progress?.done ?? 0);
      const failed = Math.max(s.counts.failed, s.progress?.failed ?? 0);
      bar.setTotal(Math.max(1, s.counts.total));
      bar.update(done + failed, { failed, phase: s.progress?.phase ?? s.experiment.status });
    }
    bar.stop();
    print(o.json, s, () => line(s));
    if (s.experiment.status === 'failed') process.exitCode = 1;
  });

program
  .command('list')
  .description('list experiments')
  .option('--project <name>')
  .addOption(new Option('--status <status>').choices([...EXPERIMENT_STATUSES]))
  .option('--limit <n>', 'at most this many', intArg('--limit'), 50)
  .option('--json', 'machine-readable output', false)
  .action(async (o: { project?: string; status?: ExperimentRow['status']; limit: number; json: boolean }) => {
    const rows = await listExperiments(await db(), { project: o.project, status: o.status, limit: o.limit });
    print(o.json, rows, () =>
      rows.length === 0
        ? 'no experiments'
        : rows
            .map((e) => `${String(e.id).padStart(5)}  ${e.status.padEnd(18)} ${`${e.done_sets}/${e.total_sets}`.padStart(11)} ` +
              `${e.failed_sets ? `${e.failed_sets} failed ` : ''}${e.project_name}/${e.name}  [${e.engine}]`)
            .join('\n'),
    );
  });

program
  .command('results <experiment>')
  .description('print the S3 URIs of the results, or download them')
  .option('--download <dir>', 'download summary.csv, report.html and provenance.json here')
  .option('--json', 'machine-readable output', false)
  .action(async (ref: string, o: { download?: string; json: boolean }) => {
    const e = await resolveExperiment(ref);
    const rows = await (await db()).query<Array<{ kind: string; uri: string; size: number }>>(
      'SELECT kind, uri, size FROM result_file WHERE experiment_id = ? AND image_set_id IS NULL ORDER BY kind',
      [e.id],
    );
    if (rows.length === 0) throw new UsageError(`experiment ${e.id} has no results yet (status ${e.status})`);
    const downloaded: string[] = [];
    if (o.download) {
      fs.mkdirSync(o.download, { recursive: true });
      for (const r of rows) {
        const { bucket, key } = parseS3Uri(r.uri);
        const local = path.join(o.download, path.posix.basename(key));
        await downloadToFile(bucket, key, local);
        downloaded.push(local);
      }
    }
    print(o.json, { experimentId: e.id, results: rows, downloaded }, () =>
      [...rows.map((r) => `${r.kind.padEnd(22)} ${r.uri}`), ...downloaded.map((d) => `downloaded ${d}`)].join('\n'),
    );
  });

program
  .command('cancel <experiment>')
  .description('stop an experiment: running engines are killed, status becomes cancelled')
  .action(async (ref: string) => {
    const e = await resolveExperiment(ref);
    if (TERMINAL_STATUSES.includes(e.status)) throw new UsageError(`experiment ${e.id} already ended (${e.status})`);
    const client = await connectClient();
    try {
      await client.workflow.getHandle(e.workflow_id ?? workflowIdFor(e.id)).cancel();
    } finally {
      await client.connection.close();
    }
    console.log(`cancellation requested for experiment ${e.id}; \`cpflow status ${e.id}\` shows when it has stopped`);
  });

program
  .command('retry <experiment>')
  .description('re-run only the failed (or cancelled) image sets of an ended experiment')
  .action(async (ref: string) => {
    const e = await resolveExperiment(ref);
    if (!TERMINAL_STATUSES.includes(e.status)) throw new UsageError(`experiment ${e.id} is still ${e.status}; retry after it ends`);
    const pool = await db();
    const reset = await resetFailedImageSets(pool, e.id);
    if (reset === 0 && e.status !== 'cancelled') throw new UsageError(`experiment ${e.id} has no failed image sets`);
    // Back to submitted: the watcher starts a new run, which finds only the reset sets pending.
    await pool.query(`UPDATE experiment SET status = 'submitted', error = NULL, finished_at = NULL WHERE id = ?`, [e.id]);
    console.log(`experiment ${e.id}: ${reset} image sets will run again`);
  });

program
  .command('seal <experiment>')
  .description('close an open experiment: no more image sets; it reduces once all have ended')
  .action(async (ref: string) => {
    const e = await resolveExperiment(ref);
    await setExperimentSealed(await db(), e.id);
    if (e.status === 'running') {
      const client = await connectClient();
      try {
        await client.workflow.getHandle(e.workflow_id ?? workflowIdFor(e.id)).signal(sealedSignal);
      } finally {
        await client.connection.close();
      }
    }
    console.log(`experiment ${e.id} sealed`);
  });

program
  .command('doctor')
  .description('check configuration and connectivity')
  .option('--recheck', 'run the CellProfiler module-coverage pipeline even if this environment passed before', false)
  .action(async (o: { recheck: boolean }) => {
    const checks: Array<[string, () => Promise<string>]> = [
      ['configuration', async () => {
        temporalConfig(); dbConfig(); s3Config(); workerConfig();
        return 'valid';
      }],
      ['MariaDB', async () => {
        const cfg = dbConfig();
        await db();
        return `${cfg.CPFLOW_DB_HOST}:${cfg.CPFLOW_DB_PORT}/${cfg.CPFLOW_DB_NAME} (schema migrated)`;
      }],
      ['S3', async () => {
        await ensureBucket('cpflow-doctor');
        return `${s3Endpoint()} (bucket create/read ok)`;
      }],
      ['Temporal', async () => {
        const client = await connectClient();
        await client.workflowService.getSystemInfo({});
        await client.connection.close();
        return temporalConfig().CPFLOW_TEMPORAL_ADDRESS;
      }],
      ['CellProfiler', async () => {
        const exe = workerConfig().CPFLOW_CELLPROFILER;
        if (!exe) return 'not configured (CPFLOW_CELLPROFILER unset): the builtin engine is used';
        if (!fs.existsSync(exe)) throw new Error(`CPFLOW_CELLPROFILER=${exe} does not exist`);
        return cellProfilerDoctorCheck(exe, { fresh: o.recheck });
      }],
    ];
    let failed = 0;
    for (const [name, check] of checks) {
      try {
        console.log(`ok    ${name.padEnd(13)} ${await check()}`);
      } catch (err) {
        failed++;
        console.log(`FAIL  ${name.padEnd(13)} ${describeError(err)}`);
      }
    }
    if (failed) process.exitCode = 1;
  });

program
  .command('analyze-local <folder>')
  .description('run the engine over local files with no services (laptop path and benchmark baseline)')
  .requiredOption('--grouping <rule>', 'grouping preset, regex or JSON rule')
  .option('--pipeline <file>', 'CellProfiler pipeline (.cppipe)')
  .option('--out <dir>', 'output folder', 'cpflow-local-out')
  .addOption(new Option('--engine <engine>').choices(['builtin', 'cellprofiler']).default('builtin'))
  .option('-j, --jobs <n>', 'image sets analysed at once', intArg('--jobs'), 2)
  .option('--json', 'machine-readable output', false)
  .action(async (folder: string, o: { grouping: string; pipeline?: string; out: string; engine: 'builtin' | 'cellprofiler'; jobs: number; json: boolean }) => {
    const r = await analyzeLocal({
      folder,
      grouping: resolveGroupingRule(o.grouping),
      pipelineFile: o.pipeline,
      outDir: o.out,
      engine: o.engine,
      jobs: o.jobs,
      progress: !o.json && process.stderr.isTTY,
    });
    print(o.json, r, () => `${r.done} image sets done, ${r.failed} failed in ${(r.seconds).toFixed(1)} s; summary: ${r.summaryPath}`);
  });

/** One line for any failure; services are named with where they were looked for. */
export function describeError(err: unknown): string {
  if (err instanceof z.ZodError) return err.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
  if (!(err instanceof Error)) return String(err);
  const code = (err as NodeJS.ErrnoException).code;
  const s3Like = err.name === 'TimeoutError' || /ECONNREFUSED|EHOSTUNREACH|ENOTFOUND|socket hang up/.test(`${code ?? ''} ${err.message}`);
  if (s3Like && !(err instanceof DatabaseUnavailableError) && !(err instanceof TemporalUnreachableError) && !/MariaDB|Temporal/.test(err.message)) {
    return `S3 unreachable at ${safe(() => s3Endpoint())}: ${err.message || code}`;
  }
  return err.message;
}

function safe(f: () => string): string {
  try {
    return f();
  } catch {
    return '(unset)';
  }
}

async function main(argv: string[]): Promise<number> {
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) return e.exitCode ?? 2; // commander printed it
    const usage = err instanceof UsageError || err instanceof ConfigError || err instanceof GroupingError ||
      err instanceof PipelineError || err instanceof SubmitError;
    console.error(`cpflow: ${describeError(err)}`);
    return usage ? 2 : 1;
  } finally {
    await closeDb().catch(() => undefined);
  }
}

if (require.main === module) {
  void main(process.argv).then((code) => process.exit(code));
}

export { main };
