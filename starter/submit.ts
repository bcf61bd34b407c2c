import crypto from 'node:crypto';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { SingleBar, Presets } from 'cli-progress';
import { configuredCellProfiler } from '../core/cellprofiler';
import {
  abandonExperiment,
  appendImageSets,
  claimProject,
  commitExperiment,
  db,
  existingSetKeys,
  findExperimentByName,
  findProject,
  findProjectByBucket,
  projectNames,
  isDuplicateEntry,
  reserveExperiment,
  type Db,
  type NewImageSet,
} from '../core/db';
import { DEFAULTS, dispatchOptionsSchema, SINGLE_STAGE, type DispatchOptions, type EngineName, type GroupingRule, type StageSpec } from '../core/model';
import {
  bucketForProject,
  canonicalName,
  foldName,
  INPUT_URI_MAX,
  validateBucketName,
  validateExperimentName,
  validateProjectName,
} from '../core/naming';
import { deletePrefix, ensureBucket, firstKeyUnder, layout, putBytes, putFile, s3Uri } from '../core/s3';
import { firstFew } from './local-files';
import { checkAppendedWells, describePlatemap, preparePlatemap, storePlatemap, type PlatemapRequest } from './platemap';
import { checkWithCellProfiler } from './submit-check';
import { SubmitError } from './submit-error';
import { listSources, type Source, type SourceSet } from './submit-sources';
import { checkColumnLimits, checkImageLimits, unrecordedSaveWarnings } from './submit-limits';
import { loadDataSets, ruleSets } from './submit-sets';
import { checkGrouping, checkStageInputs, planStages, requiredImageChannels, stageSets, StagePlanError, type StagedSet } from './submit-stages';

/**
 * `cpflow submit`: register an experiment from a local folder (uploaded, with checksums) or an S3
 * prefix, with a pipeline (or an experiment file of stages) and a grouping rule or a LoadData CSV.
 * Everything that can be checked locally is checked before anything is written (names, pipelines,
 * pooling without --group-by, group sizes, files, image sizes, CellProfiler's own view of the files
 * where it is installed); then the experiment is reserved
 * in MariaDB, its inputs uploaded under a prefix of its own (`inputs/<experiment id>/`), and its image
 * sets committed in one transaction (core/db/registration.ts). A failed submit leaves no row and no
 * uploaded input behind.
 */

export { SubmitError };

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
  /** Ask CellProfiler (when installed here) whether the pipelines make the expected image sets. Default true. */
  cellProfilerCheck?: boolean;
  engine: 'auto' | EngineName;
  /** How the experiment's image sets are dispatched; unset fields take the defaults. */
  dispatch?: Partial<DispatchOptions>;
  /** Open experiments accept more image sets (`--append`) until sealed. */
  open?: boolean;
  append?: boolean;
  /** Register the sets that have every channel and list the others, instead of refusing the submit. */
  skipIncomplete?: boolean;
  maxFailedFraction?: number;
  uploadConcurrency?: number;
  progress?: boolean;
  /** `--platemap`: the experiment gets well profiles after its image sets have ended. */
  platemap?: PlatemapRequest;
}

export interface SubmitResult {
  experimentId: number;
  project: string;
  bucket: string;
  name: string;
  engine: EngineName;
  imageSets: number;
  added: number;
  /** Files that matched no grouping rule (not registered). */
  unmatched: string[];
  /** Sets left out by --skip-incomplete, with the channels each lacks. */
  incomplete: Array<{ key: string; missing: string[] }>;
  /** Hidden files and folders of --folder that were left out (.DS_Store, ._* AppleDouble files…). */
  hidden: string[];
  channels: string[];
  appended: boolean;
  inputPrefix: string;
  /** One line about the platemap, when one was given. */
  platemap?: string;
  stages: Array<{ name: string; groupBy: string[]; groups: number; imageSets: number }>;
  /** What submit and CellProfiler said about the pipelines (also stored with the experiment). */
  warnings: string[];
  /** How the pipelines were checked against the files. */
  checked: string;
}

export { bucketForProject };

/** `auto`: CellProfiler when this machine has it and a pipeline was given, else the builtin engine. */
function resolveEngine(engine: SubmitOptions['engine'], hasPipeline: boolean): EngineName {
  if (engine !== 'auto') return engine;
  return configuredCellProfiler() && hasPipeline ? 'cellprofiler' : 'builtin';
}


/** Longest experiment id's decimal form, for checking upload keys before the id is known. */
const ID_DIGITS = 20;

/** Where an append's files go: a fresh folder under the experiment's prefix, never a registered key. */
const appendFolder = (): string => `append-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '')}-${crypto.randomBytes(3).toString('hex')}`;

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
  // 0. Names and options: refused before anything is read, uploaded or created.
  const project = canonicalName(opts.project);
  const name = canonicalName(opts.name);
  validateProjectName(project);
  validateExperimentName(name);
  if (opts.bucket !== undefined) validateBucketName(opts.bucket);
  if (opts.folder !== undefined && opts.s3Prefix !== undefined) throw new SubmitError('give either --folder <dir> or --s3-prefix <s3://bucket/prefix>, not both');
  if (opts.folder === undefined && opts.s3Prefix === undefined) {
    throw new SubmitError(`give --folder <dir> or --s3-prefix <s3://bucket/prefix> with the image sets to ${opts.append ? 'add' : 'register'}`);
  }
  if (opts.folder !== undefined) {
    const stat = fs.statSync(opts.folder, { throwIfNoEntry: false });
    if (!stat) throw new SubmitError(`--folder ${opts.folder}: no such directory`);
    if (!stat.isDirectory()) throw new SubmitError(`--folder ${opts.folder}: is not a directory`);
  }
  let s3Source: { bucket: string; key: string } | undefined;
  if (opts.s3Prefix !== undefined) {
    const m = /^s3:\/\/([^/]+)\/(.*)$/.exec(opts.s3Prefix);
    if (!m || !m[1]) throw new SubmitError(`--s3-prefix ${opts.s3Prefix}: expected s3://<bucket>/<prefix>`);
    validateBucketName(m[1], `--s3-prefix ${opts.s3Prefix}: bucket`);
    s3Source = { bucket: m[1], key: m[2] ?? '' };
  }
  if (opts.loadDataFile && opts.grouping) throw new SubmitError('give either --load-data <csv> or --grouping <rule>, not both');
  if (!opts.loadDataFile && !opts.grouping) throw new SubmitError('give --grouping <rule> (file names → image sets) or --load-data <csv> (one image set per row)');
  if (opts.loadDataFile && !fs.existsSync(opts.loadDataFile)) throw new SubmitError(`--load-data ${opts.loadDataFile}: no such file`);

  // 1. The pipelines: parsed and validated before anything is uploaded.
  const stages = planStages({ pipelineFile: opts.pipelineFile, experimentFile: opts.experimentFile, groupBy: opts.groupBy });
  const isGrouped = stages.some((s) => s.groupBy.length > 0);
  if ((opts.open || opts.append) && (stages.length > 1 || isGrouped || opts.loadDataFile)) {
    throw new SubmitError('--open/--append add image sets one by one; groups, stages and LoadData experiments are registered whole');
  }
  const engine = resolveEngine(opts.engine, stages.some((s) => s.pipelineText !== undefined));
  if (engine === 'cellprofiler' && stages.some((s) => !s.pipelineText)) throw new SubmitError('--engine cellprofiler needs --pipeline <file.cppipe>');
  if (engine === 'builtin' && stages.length > 1) throw new SubmitError('--experiment: stages run CellProfiler pipelines; use --engine cellprofiler (CPFLOW_CELLPROFILER)');
  // Without --batch-size the batch size adapts to the measured cost per set (adaptive batching).
  const dispatch = dispatchOptionsSchema.parse({ ...opts.dispatch, batchSizeExplicit: opts.dispatch?.batchSizeExplicit ?? opts.dispatch?.batchSize !== undefined });
  const warnings = unrecordedSaveWarnings(stages, dispatch);

  // 2. Files → image sets (every set must have every channel the pipelines need, or be skipped and listed).
  const { sources, hidden } = await listSources({ folder: opts.folder, s3: s3Source });
  const where = opts.folder ?? opts.s3Prefix;
  if (sources.length === 0 && !opts.loadDataFile) throw new SubmitError(`no files found in ${where}${hidden.length ? ` (only hidden ones: ${firstFew(hidden)})` : ''}`);
  const required = requiredImageChannels(stages);
  const grouped = opts.loadDataFile ? await loadDataSets(opts.loadDataFile, sources, required, opts, `${opts.folder ? '--folder' : '--s3-prefix'} ${where}`) : ruleSets(sources, required, opts, where);
  const { sets, metadataKeys, groupingRule } = grouped;
  checkColumnLimits(sets);
  const chosen = [...new Set(sets.flatMap((set) => set.files.map((f) => f.source)))];
  await checkImageLimits(chosen, opts.uploadConcurrency ?? DEFAULTS.UPLOAD_CONCURRENCY);
  for (const f of chosen) {
    // Not fatal: the set fails alone, with this reason, when analysed. Said now so nobody is surprised.
    if (f.size === 0) process.stderr.write(`warning: ${f.name} is empty; its image set will fail\n`);
  }

  // Grouping, pooling and stage inputs; one row per stage and image set.
  for (const stage of stages) checkGrouping(stage, metadataKeys, undefined, warnings);
  checkStageInputs(stages, metadataKeys);
  const staged = stageSets(stages, sets);
  // CellProfiler's own view of the files, where it is installed.
  const checked = engine === 'cellprofiler' ? await checkWithCellProfiler(stages, sets, opts, metadataKeys, warnings) : 'not checked with CellProfiler (engine builtin)';

  // 3. The project, its bucket and the experiment's name, checked against MariaDB before any write.
  const pool = await db();
  const existingProject = await findProject(pool, project);
  if (existingProject && opts.bucket !== undefined && opts.bucket !== existingProject.bucket) {
    throw new SubmitError(`--bucket ${opts.bucket}: project ${project} uses bucket ${existingProject.bucket}; a project's bucket cannot change`);
  }
  const bucket = existingProject?.bucket ?? opts.bucket ?? bucketForProject(project);
  if (!existingProject) await refuseProjectCollisions(pool, project, bucket);
  if (s3Source && s3Source.bucket !== bucket) {
    const owner = await findProjectByBucket(pool, s3Source.bucket);
    if (owner && owner.name !== project) {
      throw new SubmitError(`--s3-prefix ${opts.s3Prefix}: bucket ${s3Source.bucket} belongs to project ${owner.name}; projects never share inputs`);
    }
  }
  if (opts.folder !== undefined) {
    const longest = chosen.reduce((a, f) => (Buffer.byteLength(f.name) > Buffer.byteLength(a) ? f.name : a), '');
    const uri = s3Uri(bucket, `inputs/${'9'.repeat(ID_DIGITS)}/${opts.append ? `${appendFolder()}/` : ''}${longest}`);
    if (Buffer.byteLength(uri) > INPUT_URI_MAX) throw new SubmitError(`--folder ${opts.folder}: path ${longest} is too long for an S3 key (${INPUT_URI_MAX} bytes with the bucket and prefix)`);
  }
  if (opts.platemap && opts.append) throw new SubmitError('--platemap is given with the first submit of an experiment, not with --append');
  const platemap = opts.platemap ? preparePlatemap(opts.platemap, sets) : undefined;

  const existing = await findExperimentByName(pool, project, name);
  if (existing && !opts.append) {
    throw new SubmitError(
      `experiment ${project}/${name} already exists (id ${existing.id}, ${existing.status})` +
        (existing.status === 'registering' ? '' : '; use --append to add image sets to an open experiment'),
    );
  }
  if (opts.append && !existing) throw new SubmitError(`--append: no experiment ${project}/${name} to append to`);
  if (existing?.status === 'registering') throw new SubmitError(`--append: experiment ${project}/${name} is still being registered by another cpflow submit`);
  if (existing?.sealed) throw new SubmitError(`--append: experiment ${project}/${name} is sealed and accepts no more image sets`);

  const stageSummary = stages.map((s) => ({
    name: s.name,
    groupBy: s.groupBy,
    groups: s.groupBy.length > 0 ? new Set(staged.filter((x) => x.stage === s.name).map((x) => x.groupKey)).size : 0,
    imageSets: sets.length,
  }));
  const base = {
    project,
    name,
    bucket,
    unmatched: grouped.unmatched,
    incomplete: grouped.incomplete,
    hidden,
    channels: grouped.channels,
    stages: stageSummary,
    warnings,
    checked,
  };
  if (existing) {
    await checkAppendedWells(pool, existing.id, sets);
    const already = await existingSetKeys(pool, existing.id, sets.map((s) => s.key));
    if (already.length > 0) {
      throw new SubmitError(`--append: ${already.length} image sets are already registered in ${project}/${name}: ${firstFew(already)}; nothing was added`);
    }
    const folder = `${layout.experimentInputs(existing.id)}${appendFolder()}/`;
    const rows = await uploadAndDescribe(staged, bucket, folder, opts);
    try {
      await appendImageSets(pool, existing.id, rows);
    } catch (err) {
      if (opts.folder !== undefined) await deletePrefix(bucket, folder).catch(() => undefined);
      if (isDuplicateEntry(err)) throw new SubmitError(`--append: another submit registered some of these image sets in ${project}/${name} meanwhile; nothing was added`);
      throw err;
    }
    return { ...base, experimentId: existing.id, engine: existing.engine, imageSets: rows.length, added: rows.length, appended: true, inputPrefix: existing.input_prefix };
  }

  // 4. New experiment: bucket and project, reservation, upload, commit.
  await ensureBucket(bucket);
  const claim = await claimProject(pool, project, bucket);
  if (claim.kind === 'similar-name') throw new SubmitError(similarNameMessage(project, claim.existing));
  if (claim.kind === 'bucket-taken') throw new SubmitError(`bucket ${bucket} belongs to project ${claim.owner}; projects never share a bucket`);
  const stageSpecs: StageSpec[] = [];
  for (const stage of stages) {
    // Content-addressed: the same pipeline always lands on the same key with the same bytes.
    const pipelineUri = stage.pipelineText && stage.pipelineSha256 ? (await putBytes(bucket, layout.pipeline(stage.pipelineSha256), stage.pipelineText, 'text/plain')).uri : null;
    stageSpecs.push({ name: stage.name, pipelineUri, pipelineSha256: stage.pipelineSha256 ?? null, groupBy: stage.groupBy, input: stage.info?.input ?? 'files', inputs: stage.inputs });
  }
  const finalStage = stageSpecs[stageSpecs.length - 1];
  // A plain experiment (one pipeline, no groups, file rules) keeps no stage record: its layout is unchanged.
  const plain = stageSpecs.length === 1 && stageSpecs[0]?.name === SINGLE_STAGE && !isGrouped && stageSpecs[0]?.input === 'files';
  const reserved = await reserveExperiment(
    pool,
    {
      projectId: claim.id,
      name,
      pipelineUri: finalStage?.pipelineUri ?? null,
      pipelineSha256: finalStage?.pipelineSha256 ?? null,
      engine,
      engineOptions: {},
      dispatch,
      stages: plain ? null : stageSpecs,
      groupingRule,
      sealed: !opts.open,
      maxFailedFraction: opts.maxFailedFraction ?? DEFAULTS.MAX_FAILED_FRACTION,
      warnings,
    },
    (id) => opts.s3Prefix ?? s3Uri(bucket, layout.experimentInputs(id)),
  );
  if (reserved.kind === 'exists') {
    throw new SubmitError(
      `experiment ${project}/${name} already exists` +
        (reserved.busy ? ' (another cpflow submit is registering it right now)' : reserved.id ? ` (id ${reserved.id}, ${reserved.status})` : ''),
    );
  }
  const { experimentId, replacedExperimentId, release } = reserved.reservation;
  const folder = layout.experimentInputs(experimentId);
  // Objects already where this experiment will write are not ours to overwrite or delete: give the
  // id up (nothing uploaded yet, so no folder to remove) and say what happened.
  const refusal = await leftoverUnder(bucket, experimentId, opts.folder !== undefined).then(
    (leftover) =>
      leftover === undefined
        ? undefined
        : new SubmitError(
            `bucket ${bucket} already holds s3://${bucket}/${leftover}, written for an experiment ${experimentId} that this database does not ` +
              `know (was the database reset, or restored from an older backup?); cpflow never overwrites it. Restore the database ` +
              `that registered it, or move those objects out of ${layout.experimentRoot(experimentId)} and ${layout.experimentInputs(experimentId)}`,
          ),
    (err: unknown) => err,
  );
  if (refusal !== undefined) {
    await abandonExperiment(pool, experimentId).catch(() => undefined);
    await release();
    throw refusal;
  }
  try {
    if (replacedExperimentId !== undefined) await deletePrefix(bucket, layout.experimentInputs(replacedExperimentId)).catch(() => undefined);
    const rows = await uploadAndDescribe(staged, bucket, folder, opts);
    await commitExperiment(pool, experimentId, rows, platemap ? await storePlatemap(bucket, platemap) : undefined);
    return {
      ...base,
      experimentId,
      engine,
      imageSets: sets.length,
      added: sets.length,
      appended: false,
      inputPrefix: opts.s3Prefix ?? s3Uri(bucket, folder),
      ...(platemap ? { platemap: describePlatemap(platemap) } : {}),
    };
  } catch (err) {
    await abandonExperiment(pool, experimentId).catch(() => undefined);
    if (opts.folder !== undefined) await deletePrefix(bucket, folder).catch(() => undefined);
    throw err;
  } finally {
    await release();
  }
}

/**
 * An object already stored where the new experiment will write (its results root, or its inputs folder
 * when it uploads): left by an experiment of the same id in a database that was since reset.
 */
async function leftoverUnder(bucket: string, experimentId: number, uploads: boolean): Promise<string | undefined> {
  const underResults = await firstKeyUnder(bucket, layout.experimentRoot(experimentId));
  if (underResults !== undefined || !uploads) return underResults;
  return firstKeyUnder(bucket, layout.experimentInputs(experimentId));
}

function similarNameMessage(project: string, existing: string): string {
  return (
    `project ${project}: an existing project is named ${existing}; names that differ only in case, accents or ` +
    `separators (space - _ .) are refused so the two are never confused (use --project ${JSON.stringify(existing)} or another name)`
  );
}

/** A new project must not be mistaken for an existing one, nor take a bucket another project owns. */
async function refuseProjectCollisions(pool: Db, project: string, bucket: string): Promise<void> {
  // Another submit may create this very project meanwhile: that is no collision (claimProject decides).
  const similar = (await projectNames(pool)).find((existing) => existing !== project && foldName(existing) === foldName(project));
  if (similar) throw new SubmitError(similarNameMessage(project, similar));
  const owner = await findProjectByBucket(pool, bucket);
  if (owner && owner.name !== project) throw new SubmitError(`--bucket ${bucket}: belongs to project ${owner.name}; projects never share a bucket`);
}

/**
 * Upload a folder's files under `prefix` (S3 sources are registered where they are; a file several
 * stages share is uploaded once) and describe the rows, one per stage and image set.
 */
async function uploadAndDescribe(staged: Array<StagedSet<SourceSet['files'][number]>>, bucket: string, prefix: string, opts: SubmitOptions): Promise<NewImageSet[]> {
  const unique = [...new Set(staged.flatMap((set) => set.files.map((f) => f.source)))];
  const bar = opts.progress && opts.folder ? new SingleBar({ format: 'uploading {bar} {value}/{total} files' }, Presets.shades_classic) : undefined;
  bar?.start(unique.length, 0);
  const stored = new Map<Source, { uri: string; size: number; checksum: string }>();
  try {
    // Node's stream map: bounded concurrency, the one pool cpflow uses for such fan-outs.
    await Readable.from(unique)
      .map(
        async (src: Source) => {
          if (src.local) stored.set(src, await putFile(bucket, `${prefix}${src.name}`, src.local));
          else if (src.s3) stored.set(src, { uri: s3Uri(src.s3.bucket, src.s3.key), size: src.size, checksum: `etag:${src.s3.etag}` });
          bar?.increment();
        },
        { concurrency: opts.uploadConcurrency ?? DEFAULTS.UPLOAD_CONCURRENCY },
      )
      .toArray();
  } finally {
    bar?.stop();
  }
  return staged.map((set) => ({
    key: set.key,
    metadata: set.metadata,
    stage: set.stage,
    groupKey: set.groupKey,
    partitionKey: set.partitionKey,
    files: set.files.map((f) => {
      const s = stored.get(f.source);
      if (!s) throw new Error(`internal: ${f.source.name} was not uploaded`);
      return { channel: f.channel, ...s };
    }),
  }));
}
