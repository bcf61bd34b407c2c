import fs from 'node:fs';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { Presets, SingleBar } from 'cli-progress';
import { webUiLink } from '../../core/config';
import { db, experimentResults, imageSetCounts, listExperiments, type ExperimentRow } from '../../core/db';
import { UsageError } from '../../core/errors';
import { canonicalName } from '../../core/naming';
import { EXPERIMENT_STATUSES, isTerminal, workflowIdFor, type ExperimentProgress } from '../../core/model';
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

async function snapshot(ref: string) {
  const e = await resolveExperiment(ref);
  const counts = await imageSetCounts(await db(), e.id);
  const workflowId = e.workflow_id ?? workflowIdFor(e.id);
  const progress = isTerminal(e.status) ? undefined : await queryProgress(workflowId);
  return { experiment: e, counts, progress, sets: reconcileCounts(counts, progress), webUi: webUiLink(workflowId) };
}
type Snapshot = Awaited<ReturnType<typeof snapshot>>;

function statusLine(x: Snapshot): string {
  const { done, failed, running, pending, total } = x.sets;
  return (
    `experiment ${x.experiment.id} ${x.experiment.project_name}/${x.experiment.name}: ${x.experiment.status}` +
    `${x.progress ? ` (${x.progress.phase})` : ''} — ${done} done, ${failed} failed, ` +
    `${running} running${pending ? `, ${pending} pending` : ''} of ${total}` +
    (x.experiment.error ? `\n  error: ${x.experiment.error}` : '') +
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
        s = await snapshot(ref);
        const { done, failed, total } = s.sets;
        bar.setTotal(Math.max(1, total));
        bar.update(done + failed, { failed, phase: s.progress?.phase ?? s.experiment.status });
      }
      bar.stop();
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
    .option('--download <dir>', 'download summary.csv, report.html, provenance.json and (with a platemap) single_cells.parquet and profiles/ here')
    .option('--json', 'machine-readable output', false)
    .action(async (ref: string, o: { download?: string; json: boolean }) => {
      const e = await resolveExperiment(ref);
      const rows = (await experimentResults(await db(), e.id)).map(({ kind, uri, size }) => ({ kind, uri, size }));
      if (rows.length === 0) throw new UsageError(`experiment ${e.id} has no results yet (status ${e.status})`);
      const downloaded: string[] = [];
      if (o.download) {
        fs.mkdirSync(o.download, { recursive: true });
        for (const r of rows) {
          const { bucket, key } = parseS3Uri(r.uri);
          // Under results/ the layout is kept (profiles/…), so same-named files cannot collide.
          const local = path.join(o.download, ...(/\/results\/(.+)$/.exec(key)?.[1] ?? path.posix.basename(key)).split('/'));
          fs.mkdirSync(path.dirname(local), { recursive: true });
          await downloadToFile(bucket, key, local);
          downloaded.push(local);
        }
      }
      print(o.json, { experimentId: e.id, results: rows, downloaded }, () =>
        [...rows.map((r) => `${r.kind.padEnd(22)} ${r.uri}`), ...downloaded.map((d) => `downloaded ${d}`)].join('\n'),
      );
    });
}
