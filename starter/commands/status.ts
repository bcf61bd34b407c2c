import fs from 'node:fs';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { Presets, SingleBar } from 'cli-progress';
import { webUiLink } from '../../core/config';
import {
  db,
  experimentResults,
  failedImageSets,
  imageSetCounts,
  listExperiments,
  recentBatching,
  setResultFiles,
  setsWithWarnings,
  stageCounts,
  stagesOf,
  type ExperimentRow,
} from '../../core/db';
import { UsageError } from '../../core/errors';
import { canonicalName } from '../../core/naming';
import { adaptiveBatching, DEFAULTS, engineTime, EXPERIMENT_STATUSES, isTerminal, workflowIdFor, type ExperimentProgress } from '../../core/model';
import { downloadToFile, parseS3Uri } from '../../core/s3';
import { withClient } from '../../core/temporal';
import { progressQuery } from '../../workflows/progress';
import { reconcileCounts } from '../status-view';
import { intArg, print, resolveExperiment } from './common';

/** Read-only commands: status (with --follow), list and results. */

async function queryProgress(workflowId: string): Promise<ExperimentProgress | undefined> {
  try {
    return await withClient((client) => client.workflow.getHandle(workflowId).query(progressQuery));
  } catch {
    return undefined; // finished or not started: MariaDB has the record
  }
}

async function snapshot(ref: string, details = true) {
  const e = await resolveExperiment(ref);
  const pool = await db();
  const counts = await imageSetCounts(pool, e.id);
  const workflowId = e.workflow_id ?? workflowIdFor(e.id);
  const progress = isTerminal(e.status) ? undefined : await queryProgress(workflowId);
  const specs = stagesOf(e);
  const stages = specs.length > 1 || specs.some((s) => s.groupBy.length > 0) ? await stageCounts(pool, e.id, specs.map((s) => s.name)) : undefined;
  const failures = details && counts.failed + counts.cancelled > 0 ? await failedImageSets(pool, e.id, DEFAULTS.STATUS_FAILURES_SHOWN) : undefined;
  const warned = details ? await setsWithWarnings(pool, e.id, 3) : undefined;
  const measured = details ? await recentBatching(pool, e.id, BATCHING_SAMPLE_SETS) : undefined;
  const adaptive = adaptiveBatching(e.dispatch_options);
  const batching = {
    adaptive,
    // The newest activity's size (adaptive batching changes it as it measures), else the stored one.
    batchSize: adaptive ? (measured?.batchSize ?? progress?.batching?.batchSize) : e.dispatch_options.batchSize,
    ...(measured ? { secondsPerSet: measured.secondsPerSet, measuredSets: measured.sets } : {}),
  };
  return {
    experiment: e,
    counts,
    progress,
    sets: reconcileCounts(counts, progress),
    stages,
    failures,
    warnings: e.warnings,
    setWarnings: warned,
    batching,
    webUi: webUiLink(workflowId),
  };
}

/** Analysed sets whose engine time `status` averages. */
const BATCHING_SAMPLE_SETS = 50;

function batchingLine(b: Snapshot['batching']): string {
  const size = b.batchSize === undefined ? 'not chosen yet' : `${b.batchSize}`;
  const cost = b.secondsPerSet !== undefined ? `${engineTime(b.secondsPerSet)} of engine time per set over the last ${b.measuredSets ?? 0} analysed` : '';
  const how = b.adaptive ? `adaptive${cost ? `: ${cost}` : ''}` : `--batch-size${cost ? `; ${cost}` : ''}`;
  return `\n  image sets per analysis activity: ${size} (${how})`;
}
type Snapshot = Awaited<ReturnType<typeof snapshot>>;

const firstLine = (text: string): string => text.split('\n')[0] ?? '';

function statusLine(x: Snapshot): string {
  const { done, failed, running, pending, total } = x.sets;
  const groupBy = new Map(stagesOf(x.experiment).map((s) => [s.name, s.groupBy]));
  const stageLines = (x.stages ?? []).map((s) => {
    const by = groupBy.get(s.name) ?? [];
    return `\n  ${s.name ? `stage ${s.name}` : 'image sets'}${by.length ? ` (groups by ${by.join(',')})` : ''}: ${s.done} done, ${s.failed} failed, ${s.running} running, ${s.pending} waiting of ${s.total}`;
  });
  const failureLines = x.failures
    ? [
        `\n  failed image sets (${x.failures.total}):`,
        ...x.failures.sets.map((f) => `\n    ${f.stage ? `${f.stage}/` : ''}${f.key} (${f.attempts} attempts): ${firstLine(f.error)}`),
        ...(x.failures.total > x.failures.sets.length ? [`\n    … and ${x.failures.total - x.failures.sets.length} more`] : []),
      ]
    : [];
  const warningLines = [
    ...x.warnings.map((w) => `\n  warning: ${w}`),
    ...(x.setWarnings && x.setWarnings.total > 0
      ? [
          `\n  CellProfiler warned on ${x.setWarnings.total} image set${x.setWarnings.total === 1 ? '' : 's'}, e.g. ` +
            `${x.setWarnings.sets[0]?.key}: ${x.setWarnings.sets[0]?.warnings.slice(0, 3).join('; ')}`,
        ]
      : []),
  ];
  return (
    `experiment ${x.experiment.id} ${x.experiment.project_name}/${x.experiment.name}: ${x.experiment.status}` +
    `${x.progress ? ` (${x.progress.phase})` : ''} — ${done} done, ${failed} failed, ` +
    `${running} running${pending ? `, ${pending} pending` : ''} of ${total}` +
    (stagesOf(x.experiment).every((st) => st.groupBy.length > 0) ? '\n  analysis activities: one group each' : batchingLine(x.batching)) +
    stageLines.join('') +
    (x.experiment.error ? `\n  error: ${x.experiment.error}` : '') +
    failureLines.join('') +
    warningLines.join('') +
    (x.experiment.summary_uri ? `\n  summary: ${x.experiment.summary_uri}` : '') +
    (x.experiment.report_uri ? `\n  report: ${x.experiment.report_uri}` : '') +
    (x.webUi ? `\n  Temporal Web UI: ${x.webUi}` : '')
  );
}

export function registerStatus(program: Command): void {
  program
    .command('status <experiment>')
    .description('progress of an experiment (id or project/name)')
    .option('--follow', 'live progress bar until it ends', false)
    .option('--json', 'machine-readable output', false)
    .action(async (ref: string, o: { follow: boolean; json: boolean }) => {
      let s = await snapshot(ref);
      if (!o.follow) {
        print(o.json, s, () => statusLine(s));
        return;
      }
      const bar = new SingleBar(
        { format: '{bar} {percentage}% | {value}/{total} sets | {failed} failed | {phase}', hideCursor: true },
        Presets.shades_classic,
      );
      bar.start(Math.max(1, s.sets.total), 0, { failed: 0, phase: s.experiment.status });
      while (!isTerminal(s.experiment.status)) {
        await new Promise((r) => setTimeout(r, 1000));
        s = await snapshot(ref, false);
        const { done, failed, total } = s.sets;
        bar.setTotal(Math.max(1, total));
        // With stages, the phase names the stage that is running (e.g. `analyzing: illum 2/8, analysis 0/8`).
        const stages = s.stages?.map((x) => `${x.name} ${x.done + x.failed}/${x.total}`).join(', ');
        bar.update(done + failed, { failed, phase: `${s.progress?.phase ?? s.experiment.status}${stages ? `: ${stages}` : ''}` });
      }
      bar.stop();
      s = await snapshot(ref);
      print(o.json, s, () => statusLine(s));
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
      const rows = await listExperiments(await db(), { project: o.project === undefined ? undefined : canonicalName(o.project), status: o.status, limit: o.limit });
      print(o.json, rows, () =>
        rows.length === 0
          ? 'no experiments'
          : rows
              .map(
                (e) =>
                  `${String(e.id).padStart(5)}  ${e.status.padEnd(18)} ${`${e.done_sets}/${e.total_sets}`.padStart(11)} ` +
                  `${e.failed_sets ? `${e.failed_sets} failed ` : ''}${e.project_name}/${e.name}  [${e.engine}]`,
              )
              .join('\n'),
      );
    });

  program
    .command('results <experiment>')
    .description('print the S3 URIs of the results, or download them')
    .option('--download <dir>', 'download summary.csv, report.html, provenance.json, group outputs and (with a platemap) single_cells.parquet and profiles/ here')
    .option('--sets', 'with --download: also every image set\'s tables and files, into <dir>/sets/<key>/ (<dir>/stages/<stage>/sets/<key>/ for stages)', false)
    .option('--json', 'machine-readable output', false)
    .action(async (ref: string, o: { download?: string; sets: boolean; json: boolean }) => {
      const e = await resolveExperiment(ref);
      const pool = await db();
      const rows = (await experimentResults(pool, e.id)).map(({ kind, uri, size }) => ({ kind, uri, size }));
      if (rows.length === 0) throw new UsageError(`experiment ${e.id} has no results yet (status ${e.status})`);
      if (o.sets && !o.download) throw new UsageError('--sets downloads the image sets\' tables: give --download <dir> too');
      const downloaded: string[] = [];
      if (o.download) {
        const root = o.download;
        fs.mkdirSync(root, { recursive: true });
        const prefix = `cpflow/${e.id}/`;
        // Experiment results keep their file names; group outputs keep their place under stages/…/groups/.
        for (const r of rows) {
          const { bucket, key } = parseS3Uri(r.uri);
          // Under results/ the layout is kept (profiles/…, stages/<stage>/summary.csv), and group outputs keep
          // their group folder, so same-named files cannot collide.
          const rel =
            r.kind.startsWith('group-') || r.kind.startsWith('summary:')
              ? key.slice(prefix.length).replace(/^results\//, '')
              : (/\/results\/(.+)$/.exec(key)?.[1] ?? path.posix.basename(key));
          const local = path.join(root, ...rel.split('/'));
          fs.mkdirSync(path.dirname(local), { recursive: true });
          await downloadToFile(bucket, key, local);
          downloaded.push(local);
        }
        if (o.sets) {
          for (const f of await setResultFiles(pool, e.id)) {
            const { bucket, key } = parseS3Uri(f.uri);
            const setPrefix = `${prefix}${f.stage ? `stages/${f.stage}/` : ''}sets/${f.setKey}/`;
            const rel = key.startsWith(setPrefix) ? key.slice(setPrefix.length) : path.posix.basename(key);
            const local = path.join(root, ...(f.stage ? ['stages', f.stage] : []), 'sets', f.setKey, ...rel.split('/'));
            fs.mkdirSync(path.dirname(local), { recursive: true });
            await downloadToFile(bucket, key, local);
            downloaded.push(local);
          }
        }
      }
      print(o.json, { experimentId: e.id, results: rows, downloaded }, () =>
        [...rows.map((r) => `${r.kind.padEnd(22)} ${r.uri}`), ...downloaded.map((d) => `downloaded ${d}`)].join('\n'),
      );
    });
}
