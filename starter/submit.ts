import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { SingleBar, Presets } from 'cli-progress';
import { configuredCellProfiler, configuredPlugins, pythonBeside } from '../core/cellprofiler';
import { db, findExperimentByName, findProject, registerExperiment, upsertImageSets, upsertProject, type NewImageSet } from '../core/db';
import { checkChannelMapKeys, groupFiles, metadataKeysOf } from '../core/grouping';
import { parseLoadDataCsv } from '../core/load-data';
import {
  DEFAULTS,
  dispatchOptionsSchema,
  SINGLE_STAGE,
  type DispatchOptions,
  type EngineName,
  type GroupingRule,
  type StageSpec,
} from '../core/model';
import { ensureBucket, layout, listObjects, parseS3Uri, putBytes, putFile, s3Uri } from '../core/s3';
import { checkStageWithCellProfiler, type CheckSet } from './submit-check';
import {
  checkGrouping,
  checkStageInputs,
  planStages,
  requiredImageChannels,
  stageSets,
  StagePlanError,
  type PlannedStage,
} from './submit-stages';

/**
 * `cpflow submit`: register an experiment from a local folder (uploaded, with checksums) or an S3
 * prefix, with a pipeline (or an experiment file of stages) and a grouping rule or a LoadData CSV.
 * Everything is checked before anything is written (pipelines, pooling without --group-by, group
 * sizes, CellProfiler's own view of the files where it is installed); the experiment and its image
 * sets are then registered in one transaction.
 */

export class SubmitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SubmitError';
  }
}

export interface SubmitOptions {
  project: string;
  bucket?: string;
  name: string;
  folder?: string;
  s3Prefix?: string;
  pipelineFile?: string;
  /** Stages (YAML/JSON), instead of one --pipeline. */
  experimentFile?: string;
  /** A LoadData CSV: one image set per row, instead of a grouping rule. */
  loadDataFile?: string;
  grouping?: GroupingRule;
  /** The `--channel-map` the user gave (its keys must be raw channels some file has). */
  userChannelMap?: Record<string, string>;
  /** Metadata keys whose values form a group (one engine invocation per group). */
  groupBy?: string[];
  engine: 'auto' | EngineName;
  /** How the experiment's image sets are dispatched; unset fields take the defaults. */
  dispatch?: Partial<DispatchOptions>;
  /** Open experiments accept more image sets (`--append`) until sealed. */
  open?: boolean;
  append?: boolean;
  maxFailedFraction?: number;
  uploadConcurrency?: number;
  progress?: boolean;
  /** Ask CellProfiler (when installed here) whether the pipelines make the expected image sets. Default true. */
  cellProfilerCheck?: boolean;
}

export interface SubmitResult {
  experimentId: number;
  project: string;
  bucket: string;
  name: string;
  engine: EngineName;
  imageSets: number;
  added: number;
  unmatched: string[];
  channels: string[];
  appended: boolean;
  stages: Array<{ name: string; groupBy: string[]; groups: number; imageSets: number }>;
  /** What submit and CellProfiler said about the pipelines (also stored with the experiment). */
  warnings: string[];
  /** How the pipelines were checked against the files. */
  checked: string;
}

export const bucketForProject = (project: string): string =>
  `cpflow-${project.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '')}`.slice(0, 63);

function listLocalFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (entry.name.startsWith('.')) continue;
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.isFile()) out.push(path.relative(root, full).split(path.sep).join('/'));
    }
  };
  walk(root);
  return out.sort();
}

/** `auto`: CellProfiler when this machine has it and a pipeline was given, else the builtin engine. */
function resolveEngine(engine: SubmitOptions['engine'], hasPipeline: boolean): EngineName {
  if (engine !== 'auto') return engine;
  return configuredCellProfiler() && hasPipeline ? 'cellprofiler' : 'builtin';
}

type Source = { name: string; local?: string; s3?: { bucket: string; key: string; size: number; etag: string } };
interface SourceSet {
  key: string;
  metadata: Record<string, string>;
  files: Array<{ channel: string; source: Source }>;
}

export async function submit(opts: SubmitOptions): Promise<SubmitResult> {
  try {
    return await submitChecked(opts);
  } catch (err) {
    // Problems with the input are usage errors: one line, exit 2, nothing registered.
    if (err instanceof StagePlanError) throw new SubmitError(err.message);
    throw err;
  }
}

async function submitChecked(opts: SubmitOptions): Promise<SubmitResult> {
  if (!opts.folder === !opts.s3Prefix && !opts.append) {
    throw new SubmitError('give exactly one of --folder <dir> or --s3-prefix <s3://bucket/prefix>');
  }
  if (opts.folder && !fs.existsSync(opts.folder)) throw new SubmitError(`--folder ${opts.folder}: no such directory`);
  if (opts.loadDataFile && opts.grouping) throw new SubmitError('give either --load-data <csv> or --grouping <rule>, not both');
  if (!opts.loadDataFile && !opts.grouping) throw new SubmitError('give --grouping <rule> (file names → image sets) or --load-data <csv> (one image set per row)');
  if (opts.loadDataFile && !fs.existsSync(opts.loadDataFile)) throw new SubmitError(`--load-data ${opts.loadDataFile}: no such file`);

  // 1. The pipelines: parsed and validated before anything is uploaded.
  const stages = planStages({ pipelineFile: opts.pipelineFile, experimentFile: opts.experimentFile, groupBy: opts.groupBy });
  const grouped = stages.some((s) => s.groupBy.length > 0);
  if ((opts.open || opts.append) && (stages.length > 1 || grouped || opts.loadDataFile)) {
    throw new SubmitError('--open/--append add image sets one by one; groups, stages and LoadData experiments are registered whole');
  }
  const hasPipeline = stages.some((s) => s.pipelineText !== undefined);
  const engine = resolveEngine(opts.engine, hasPipeline);
  if (engine === 'cellprofiler' && stages.some((s) => !s.pipelineText)) throw new SubmitError('--engine cellprofiler needs --pipeline <file.cppipe>');
  if (engine === 'builtin' && stages.length > 1) throw new SubmitError('--experiment: stages run CellProfiler pipelines; use --engine cellprofiler (CPFLOW_CELLPROFILER)');
  const warnings: string[] = [];
  const batchSize = opts.dispatch?.batchSize ?? DEFAULTS.BATCH_SIZE;
  for (const stage of stages) {
    const unrecorded = stage.info?.unrecordedSaves ?? [];
    if (batchSize > 1 && stage.groupBy.length === 0 && unrecorded.length > 0) {
      // Said now: such batches cost one wasted invocation before their sets run one by one.
      warnings.push(
        `${stage.label}: SaveImages (module ${unrecorded.join(', ')}) does not record its files in the Image table, so in a batch cpflow cannot tell ` +
          `which set wrote which file: batches whose sets save such files run again set by set (set "Record the file and path information to the saved image?" to Yes, or --batch-size 1)`,
      );
    }
  }

  // 2. Files → image sets (every set must have every channel the pipelines need).
  let sources: Source[] = [];
  let inputPrefix: string;
  const pool = await db();
  const existingProject = await findProject(pool, opts.project);
  const bucket = existingProject?.bucket ?? opts.bucket ?? bucketForProject(opts.project);
  if (opts.folder) {
    const root = path.resolve(opts.folder);
    sources = listLocalFiles(root).map((rel) => ({ name: rel, local: path.join(root, rel) }));
    inputPrefix = s3Uri(bucket, `inputs/${opts.name}/`);
  } else if (opts.s3Prefix) {
    const { bucket: srcBucket, key: prefix } = parseS3Uri(opts.s3Prefix);
    for await (const o of listObjects(srcBucket, prefix)) {
      sources.push({ name: o.key.slice(prefix.length), s3: { bucket: srcBucket, key: o.key, size: o.size, etag: o.etag } });
    }
    inputPrefix = opts.s3Prefix;
  } else {
    throw new SubmitError('give --folder or --s3-prefix with the image sets to add');
  }
  if (sources.length === 0 && !opts.loadDataFile) throw new SubmitError(`no files found in ${opts.folder ?? opts.s3Prefix}`);

  const required = requiredImageChannels(stages);
  let sets: SourceSet[];
  let unmatched: string[] = [];
  let channels: string[];
  let metadataKeys: string[];
  let groupingRule: GroupingRule;
  if (opts.loadDataFile) {
    const table = parseLoadDataCsv(fs.readFileSync(opts.loadDataFile, 'utf8'), opts.loadDataFile, { folderRoot: opts.folder });
    const missing = required.filter((c) => !table.channels.includes(c));
    if (missing.length > 0) {
      throw new SubmitError(`--load-data ${opts.loadDataFile}: no column FileName_${missing[0]} for channel ${missing.join(', ')} the pipeline needs (channels in the CSV: ${table.channels.join(', ')})`);
    }
    sets = await resolveLoadDataFiles(table.sets, sources, opts);
    channels = table.channels;
    metadataKeys = table.metadataKeys;
    groupingRule = { pattern: `loaddata:${path.basename(opts.loadDataFile)}`, channelGroup: 'Channel', channelMap: {}, preset: 'loaddata' };
  } else {
    const rule = opts.grouping as GroupingRule;
    const result = groupFiles(sources, (s) => s.name, rule, required.length > 0 ? required : undefined);
    checkChannelMapKeys(opts.userChannelMap ?? {}, result);
    if (result.sets.length === 0) {
      throw new SubmitError(
        `the grouping rule matched none of the ${sources.length} files in ${opts.folder ?? opts.s3Prefix} (first: ${sources[0]?.name})`,
      );
    }
    // Registration order is the order a group's sets reach CellProfiler: the files' own order (as
    // CellProfiler orders the files of one folder), not the order of the keys.
    const location = (s: (typeof result.sets)[number]): string => s.files.map((f) => f.file.name).join('\n');
    sets = [...result.sets]
      .sort((a, b) => (location(a) < location(b) ? -1 : location(a) > location(b) ? 1 : 0))
      .map((s) => ({ key: s.key, metadata: s.metadata, files: s.files.map((f) => ({ channel: f.channel, source: f.file })) }));
    unmatched = result.unmatched;
    channels = result.channels;
    metadataKeys = metadataKeysOf(rule);
    groupingRule = rule;
  }
  for (const set of sets) {
    for (const f of set.files) {
      if (f.source.s3?.size === 0 || (f.source.local && fs.statSync(f.source.local).size === 0)) {
        // Not fatal: the set fails alone, with this reason, when analysed. Said now so nobody is surprised.
        process.stderr.write(`warning: ${f.source.name} is empty; its image set will fail\n`);
      }
    }
  }

  // 3. Grouping, pooling and stage inputs; one row per stage and image set.
  for (const stage of stages) checkGrouping(stage, metadataKeys, undefined, warnings);
  checkStageInputs(stages, metadataKeys);
  const staged = stageSets(stages, sets);

  // 4. CellProfiler's own view of the files, where it is installed.
  let checked = 'not checked with CellProfiler (engine builtin)';
  if (engine === 'cellprofiler') checked = await checkWithCellProfiler(stages, sets, opts, metadataKeys, warnings);

  // 5. Experiment row checks (append vs new) before any upload.
  const existing = await findExperimentByName(pool, opts.project, opts.name);
  if (existing && !opts.append) {
    throw new SubmitError(
      `experiment ${opts.project}/${opts.name} already exists (id ${existing.id}, ${existing.status}); use --append to add image sets to an open experiment`,
    );
  }
  if (opts.append && !existing) throw new SubmitError(`--append: no experiment ${opts.project}/${opts.name} to append to`);
  if (existing && existing.sealed) {
    throw new SubmitError(`--append: experiment ${opts.project}/${opts.name} is sealed and accepts no more image sets`);
  }

  // 6. Upload (local folders) and register.
  await ensureBucket(bucket);
  const projectId = existingProject?.id ?? (await upsertProject(pool, opts.project, bucket));
  const stageSpecs: StageSpec[] = [];
  for (const stage of stages) {
    let pipelineUri: string | null = null;
    if (stage.pipelineText && stage.pipelineSha256 && !existing) {
      pipelineUri = (await putBytes(bucket, layout.pipeline(stage.pipelineSha256), stage.pipelineText, 'text/plain')).uri;
    }
    stageSpecs.push({
      name: stage.name,
      pipelineUri,
      pipelineSha256: stage.pipelineSha256 ?? null,
      groupBy: stage.groupBy,
      input: stage.info?.input ?? 'files',
      inputs: stage.inputs,
    });
  }
  const finalStage = stageSpecs[stageSpecs.length - 1];
  const pipelineUri = existing?.pipeline_uri ?? finalStage?.pipelineUri ?? null;
  const pipelineSha = existing?.pipeline_sha256 ?? finalStage?.pipelineSha256 ?? null;
  // A plain experiment (one pipeline, no groups, file rules) keeps no stage record: its layout is unchanged.
  const plain = stageSpecs.length === 1 && stageSpecs[0]?.name === SINGLE_STAGE && !grouped && stageSpecs[0]?.input === 'files';

  const uniqueSources = [...new Set(sets.flatMap((set) => set.files.map((f) => f.source)))];
  const bar = opts.progress && opts.folder ? new SingleBar({ format: 'uploading {bar} {value}/{total} files' }, Presets.shades_classic) : undefined;
  bar?.start(uniqueSources.length, 0);
  const uploaded = new Map<Source, { uri: string; size: number; checksum: string }>();
  // Node's stream map: bounded concurrency, the one pool cpflow uses for such fan-outs.
  await Readable.from(uniqueSources)
    .map(
      async (src: Source) => {
        if (src.local) {
          const stored = await putFile(bucket, `inputs/${opts.name}/${src.name}`, src.local);
          uploaded.set(src, stored);
        } else if (src.s3) {
          uploaded.set(src, { uri: s3Uri(src.s3.bucket, src.s3.key), size: src.s3.size, checksum: `etag:${src.s3.etag}` });
        }
        bar?.increment();
      },
      { concurrency: opts.uploadConcurrency ?? DEFAULTS.UPLOAD_CONCURRENCY },
    )
    .toArray();
  bar?.stop();

  const rows: NewImageSet[] = staged.map((set) => ({
    key: set.key,
    metadata: set.metadata,
    stage: set.stage,
    groupKey: set.groupKey,
    partitionKey: set.partitionKey,
    files: set.files.map((f) => {
      const stored = uploaded.get(f.source);
      if (!stored) throw new Error(`internal: ${f.source.name} was not uploaded`);
      return { channel: f.channel, ...stored };
    }),
  }));

  let experimentId: number;
  if (existing) {
    await upsertImageSets(pool, existing.id, rows);
    experimentId = existing.id;
  } else {
    experimentId = await registerExperiment(
      pool,
      {
        projectId,
        name: opts.name,
        pipelineUri,
        pipelineSha256: pipelineSha,
        engine,
        engineOptions: {},
        dispatch: dispatchOptionsSchema.parse(opts.dispatch ?? {}),
        stages: plain ? null : stageSpecs,
        inputPrefix,
        groupingRule,
        sealed: !opts.open,
        maxFailedFraction: opts.maxFailedFraction ?? DEFAULTS.MAX_FAILED_FRACTION,
        warnings,
      },
      rows,
    );
  }
  return {
    experimentId,
    project: opts.project,
    bucket,
    name: opts.name,
    engine: existing?.engine ?? engine,
    imageSets: sets.length,
    added: sets.length,
    unmatched,
    channels,
    appended: Boolean(existing),
    stages: stages.map((s) => ({
      name: s.name,
      groupBy: s.groupBy,
      groups: s.groupBy.length > 0 ? new Set(staged.filter((x) => x.stage === s.name).map((x) => x.groupKey)).size : 0,
      imageSets: sets.length,
    })),
    warnings,
    checked,
  };
}

/** Every row's files, found in the uploaded folder (or S3 prefix) or at their s3:// URL. */
async function resolveLoadDataFiles(
  rows: ReturnType<typeof parseLoadDataCsv>['sets'],
  sources: Source[],
  opts: SubmitOptions,
): Promise<SourceSet[]> {
  const byName = new Map(sources.map((s) => [s.name, s]));
  const where = opts.folder ? `--folder ${opts.folder}` : `--s3-prefix ${opts.s3Prefix}`;
  // s3:// URLs: one listing per folder, not one request per file.
  const urlDirs = new Map<string, Map<string, Source>>();
  for (const row of rows) {
    for (const f of row.files) {
      if (f.location.kind !== 's3') continue;
      const { bucket, key } = parseS3Uri(f.location.uri);
      const dir = `${bucket}/${key.slice(0, key.lastIndexOf('/') + 1)}`;
      if (urlDirs.has(dir)) continue;
      const listed = new Map<string, Source>();
      const prefix = key.slice(0, key.lastIndexOf('/') + 1);
      for await (const o of listObjects(bucket, prefix)) {
        listed.set(s3Uri(bucket, o.key), { name: o.key, s3: { bucket, key: o.key, size: o.size, etag: o.etag } });
      }
      urlDirs.set(dir, listed);
    }
  }
  return rows.map((row) => ({
    key: row.key,
    metadata: row.metadata,
    files: row.files.map((f) => {
      if (f.location.kind === 'relative') {
        const source = byName.get(f.location.path);
        if (!source) throw new SubmitError(`--load-data ${opts.loadDataFile}: row ${row.row}: ${f.location.path} (${f.channel}) is not in ${where}`);
        return { channel: f.channel, source };
      }
      const { bucket, key } = parseS3Uri(f.location.uri);
      const source = urlDirs.get(`${bucket}/${key.slice(0, key.lastIndexOf('/') + 1)}`)?.get(f.location.uri);
      if (!source) throw new SubmitError(`--load-data ${opts.loadDataFile}: row ${row.row}: ${f.location.uri} (${f.channel}) does not exist`);
      return { channel: f.channel, source };
    }),
  }));
}

/** Runs the submit-time CellProfiler check of every stage; returns how it went (for the summary line). */
async function checkWithCellProfiler(
  stages: PlannedStage[],
  sets: SourceSet[],
  opts: SubmitOptions,
  metadataKeys: string[],
  warnings: string[],
): Promise<string> {
  if (opts.cellProfilerCheck === false) return 'not checked with CellProfiler (--no-cellprofiler-check)';
  const executable = configuredCellProfiler();
  const python = executable ? pythonBeside(executable) : undefined;
  if (!python) {
    const note = 'CellProfiler is not installed where submit runs (CPFLOW_CELLPROFILER): the pipelines were not checked against the files';
    warnings.push(note);
    return 'not checked with CellProfiler (not installed here)';
  }
  let checkedSets = 0;
  for (const stage of stages) {
    const sample = sampleFor(stage, sets);
    const upstream = stages.find((s) => stage.inputs[0] && s.name === stage.inputs[0].stage);
    const outcome = await checkStageWithCellProfiler(stage, sample, upstream, { python, pluginsDir: configuredPlugins() });
    // CellProfiler's own list of aggregating modules covers plugins cpflow's list cannot know.
    const known = new Set((stage.info?.pooling ?? []).map((p) => p.moduleNum));
    const extra = outcome.aggregation.filter((a) => !known.has(a.moduleNum));
    if (extra.length > 0) checkGrouping(stage, metadataKeys, extra);
    warnings.push(...outcome.warnings);
    checkedSets += outcome.checkedSets;
  }
  return `checked with CellProfiler on ${checkedSets} image set${checkedSets === 1 ? '' : 's'}`;
}

/** The first group (grouped stage) or the first few image sets, as CellProfiler would get them. */
function sampleFor(stage: PlannedStage, sets: SourceSet[]): CheckSet[] {
  let chosen = sets;
  if (stage.groupBy.length > 0) {
    const first = sets[0];
    chosen = first ? sets.filter((s) => stage.groupBy.every((k) => s.metadata[k] === first.metadata[k])) : [];
    chosen = chosen.slice(0, DEFAULTS.SUBMIT_CHECK_SETS * 8);
  } else {
    chosen = sets.slice(0, DEFAULTS.SUBMIT_CHECK_SETS);
  }
  return chosen.map((s) => ({
    key: s.key,
    metadata: s.metadata,
    files: s.files.map((f) => ({ channel: f.channel, name: path.posix.basename(f.source.name), local: f.source.local })),
  }));
}
