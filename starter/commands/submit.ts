import { Option, type Command } from 'commander';
import { UsageError } from '../../core/errors';
import { GROUPING_PRESETS, resolveGroupingRule } from '../../core/grouping';
import { DEFAULTS, workflowIdFor } from '../../core/model';
import { withClient } from '../../core/temporal';
import { imageSetsAddedSignal } from '../../workflows/progress';
import { firstFew } from '../local-files';
import { PLATEMAP_OPTIONS, platemapRequestFromFlags, type PlatemapFlags } from '../platemap';
import { submit, type SubmitResult } from '../submit';
import { fractionArg, intArg, print } from './common';

interface SubmitFlags extends PlatemapFlags {
  project: string;
  name: string;
  folder?: string;
  s3Prefix?: string;
  pipeline?: string;
  experiment?: string;
  loadData?: string;
  grouping?: string;
  groupBy?: string;
  cellprofilerCheck: boolean;
  channelMap?: string;
  engine: 'auto' | 'builtin' | 'cellprofiler';
  batchSize?: number;
  window: number;
  engineTimeout: number;
  bucket?: string;
  open: boolean;
  append: boolean;
  maxFailedFraction: number;
  skipIncomplete: boolean;
  json: boolean;
}

function parseGroupBy(spec: string | undefined): string[] | undefined {
  if (spec === undefined) return undefined;
  const keys = spec.split(',').map((k) => k.trim());
  if (keys.length === 0 || keys.some((k) => !/^[A-Za-z][A-Za-z0-9_]*$/.test(k))) {
    throw new UsageError(`--group-by: "${spec}" is not a comma-separated list of metadata keys (e.g. Plate or Plate,Well)`);
  }
  if (new Set(keys).size !== keys.length) throw new UsageError(`--group-by: "${spec}" names a key twice`);
  return keys;
}

function parseChannelMap(spec: string | undefined): Record<string, string> {
  const channelMap: Record<string, string> = {};
  for (const pair of (spec ?? '').split(',').filter(Boolean)) {
    const [k, v] = pair.split('=');
    if (!k || !v) throw new UsageError(`--channel-map: "${pair}" is not raw=Name`);
    channelMap[k] = v;
  }
  return channelMap;
}

export function registerSubmit(program: Command): void {
  program
    .command('submit')
    .description('register an experiment from a local folder or an S3 prefix')
    .requiredOption('--project <name>', 'project (one S3 bucket per project; created if new)')
    .requiredOption('--name <name>', 'experiment name, unique within the project')
    .option('--folder <dir>', 'local folder of images to upload')
    .option('--s3-prefix <uri>', 'images already in S3, e.g. s3://bucket/plate1/')
    .option('--pipeline <file>', 'CellProfiler pipeline (.cppipe); required for the cellprofiler engine')
    .option('--experiment <file>', 'stages (YAML or JSON): pipelines run one after the other, later ones taking files of earlier ones')
    .option('--grouping <rule>', `file names → image sets: preset (${Object.keys(GROUPING_PRESETS).join(', ')}), a regex with named groups, or a JSON rule`)
    .option('--load-data <csv>', 'LoadData CSV: one image set per row (FileName_/PathName_ relative to --folder or --s3-prefix, or URL_ s3://…)')
    .option('--group-by <keys>', 'metadata keys whose values form a group, e.g. Plate or Plate,Well: one CellProfiler run per group')
    .option('--no-cellprofiler-check', 'do not ask CellProfiler (when installed here) whether the pipeline makes the expected image sets')
    .option('--channel-map <map>', 'raw channel → pipeline name, e.g. d0=DNA,d1=PH3')
    .addOption(new Option('--engine <engine>', 'analysis engine').choices(['auto', 'builtin', 'cellprofiler']).default('auto'))
    .option('--batch-size <n>', 'image sets per engine invocation (default: chosen from the measured time per set)', intArg('--batch-size'))
    .option('--window <n>', 'what this experiment may have in flight at once: analysis activities (image sets with --batch-size, groups with --group-by)', intArg('--window'), DEFAULTS.WINDOW)
    .option('--engine-timeout <seconds>', 'longest one engine invocation may run', intArg('--engine-timeout'), DEFAULTS.ENGINE_TIMEOUT_SECONDS)
    .option('--bucket <bucket>', 'bucket for a new project (default cpflow-<project>)')
    .option('--open', 'accept more image sets later (seal with `cpflow seal`)', false)
    .option('--append', 'add image sets to an open experiment', false)
    .option('--max-failed-fraction <f>', 'above this fraction of failed sets the experiment is failed', fractionArg, DEFAULTS.MAX_FAILED_FRACTION)
    .option('--skip-incomplete', 'register the image sets that have every channel and list the others, instead of refusing the submit', false)
    .option('--json', 'machine-readable output', false)
    .addOption(PLATEMAP_OPTIONS.platemap)
    .addOption(PLATEMAP_OPTIONS.controls)
    .addOption(PLATEMAP_OPTIONS.normalization)
    .addOption(PLATEMAP_OPTIONS.reportFeature)
    .action(async (o: SubmitFlags) => {
      const userChannelMap = parseChannelMap(o.channelMap);
      if (o.channelMap && !o.grouping) throw new UsageError('--channel-map renames channels of --grouping; a LoadData CSV names its channels itself');
      const result = await submit({
        project: o.project,
        bucket: o.bucket,
        name: o.name,
        folder: o.folder,
        s3Prefix: o.s3Prefix,
        pipelineFile: o.pipeline,
        experimentFile: o.experiment,
        loadDataFile: o.loadData,
        grouping: o.grouping ? resolveGroupingRule(o.grouping, userChannelMap) : undefined,
        userChannelMap,
        groupBy: parseGroupBy(o.groupBy),
        cellProfilerCheck: o.cellprofilerCheck,
        engine: o.engine,
        dispatch: { batchSize: o.batchSize, window: o.window, engineTimeoutSeconds: o.engineTimeout },
        open: o.open,
        append: o.append,
        maxFailedFraction: o.maxFailedFraction,
        skipIncomplete: o.skipIncomplete,
        progress: !o.json && process.stderr.isTTY,
        platemap: platemapRequestFromFlags(o),
      });
      if (result.appended) {
        // The watcher would notice too; signalling now just saves its poll interval.
        await withClient((client) => client.workflow.getHandle(workflowIdFor(result.experimentId)).signal(imageSetsAddedSignal)).catch(
          () => undefined,
        );
      }
      print(o.json, result, () => submitReport(result));
    });
}

/** Most files shown by name in the text report (--json has them all). */
const LISTED = 20;

/** What was registered, and every file or set that was not, by name. */
export function submitReport(result: SubmitResult): string {
  const lines = [
    `${result.appended ? 'appended' : 'submitted'} experiment ${result.experimentId} (${result.project}/${result.name}): ` +
      `${result.imageSets} image sets, channels ${result.channels.join(', ')}, engine ${result.engine}, inputs ${result.inputPrefix}; ${result.checked}`,
    ...result.stages
      .filter((s) => s.name !== '' || s.groupBy.length > 0)
      .map((s) => `  ${s.name ? `stage ${s.name}: ` : ''}${s.groupBy.length > 0 ? `${s.groups} groups by ${s.groupBy.join(',')}` : 'image set by image set'}`),
  ];
  if (result.incomplete.length > 0) {
    lines.push(`skipped ${result.incomplete.length} incomplete image sets (--skip-incomplete):`);
    for (const i of result.incomplete.slice(0, LISTED)) lines.push(`  ${i.key} lacks ${i.missing.join(', ')}`);
    if (result.incomplete.length > LISTED) lines.push(`  … and ${result.incomplete.length - LISTED} more (--json lists them all)`);
  }
  if (result.unmatched.length > 0) {
    lines.push(`${result.unmatched.length} files matched no grouping rule and were not registered:`);
    for (const f of result.unmatched.slice(0, LISTED)) lines.push(`  ${f}`);
    if (result.unmatched.length > LISTED) lines.push(`  … and ${result.unmatched.length - LISTED} more (--json lists them all)`);
  }
  if (result.hidden.length > 0) lines.push(`left out ${result.hidden.length} hidden files or folders: ${firstFew(result.hidden)}`);
  if (result.platemap) lines.push(result.platemap);
  for (const w of result.warnings) lines.push(`warning: ${w}`);
  return lines.join('\n');
}
