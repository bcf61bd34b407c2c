import crypto from 'node:crypto';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { SingleBar, Presets } from 'cli-progress';
import { configuredCellProfiler } from '../core/cellprofiler';
import { imageLimitsConfig } from '../core/config';
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
import { DEFAULTS, dispatchOptionsSchema, type DispatchOptions, type EngineName, type GroupingRule } from '../core/model';
import { groupFiles, type GroupedSet } from '../core/grouping';
import { imageLimitProblem, sizeProblem } from '../core/image-limits';
import {
  bucketForProject,
  canonicalName,
  CHANNEL_MAX,
  foldName,
  INPUT_URI_MAX,
  SET_KEY_MAX,
  validateBucketName,
  validateExperimentName,
  validateProjectName,
} from '../core/naming';
import { deletePrefix, ensureBucket, layout, listObjects, putBytes, putFile, s3Uri } from '../core/s3';
import { parseCppipe, pipelineSha256 } from '../core/pipeline/cppipe';
import { validatePipelineForCpflow } from '../core/pipeline/validate';
import { firstFew, listLocalFolder } from './local-files';
import { checkAppendedWells, describePlatemap, preparePlatemap, storePlatemap, type PlatemapRequest } from './platemap';
import { readPipelineFile } from './pipeline-file';

/**
 * `cpflow submit`: register an experiment from a local folder (uploaded, with checksums) or an S3
 * prefix, with a pipeline and a grouping rule. Everything that can be checked locally is checked
 * before anything is written (names, pipeline, files, image sizes); then the experiment is reserved
 * in MariaDB, its inputs uploaded under a prefix of its own (`inputs/<experiment id>/`), and its image
 * sets committed in one transaction (core/db/registration.ts). A failed submit leaves no row and no
 * uploaded input behind.
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
  grouping: GroupingRule;
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
}

export { bucketForProject };

/** `auto`: CellProfiler when this machine has it and a pipeline was given, else the builtin engine. */
function resolveEngine(engine: SubmitOptions['engine'], hasPipeline: boolean): EngineName {
  if (engine !== 'auto') return engine;
  return configuredCellProfiler() && hasPipeline ? 'cellprofiler' : 'builtin';
}

type Source = { name: string; local?: string; size: number; s3?: { bucket: string; key: string; etag: string } };

/** Longest experiment id's decimal form, for checking upload keys before the id is known. */
const ID_DIGITS = 20;

/** Where an append's files go: a fresh folder under the experiment's prefix, never a registered key. */
const appendFolder = (): string => `append-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '')}-${crypto.randomBytes(3).toString('hex')}`;

export async function submit(opts: SubmitOptions): Promise<SubmitResult> {
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

  // 1. The pipeline: parsed and validated before anything is uploaded.
  let pipelineText: string | undefined;
  let requiredChannels: string[] | undefined;
  if (opts.pipelineFile) {
    pipelineText = readPipelineFile(opts.pipelineFile);
    requiredChannels = validatePipelineForCpflow(parseCppipe(pipelineText, opts.pipelineFile)).channels;
  }
  const engine = resolveEngine(opts.engine, pipelineText !== undefined);
  if (engine === 'cellprofiler' && !pipelineText) throw new SubmitError('--engine cellprofiler needs --pipeline <file.cppipe>');

  // 2. Files → image sets (every set must have every channel the pipeline needs, or be skipped and listed).
  let sources: Source[] = [];
  let hidden: string[] = [];
  if (opts.folder !== undefined) {
    const listing = listLocalFolder(opts.folder);
    if (listing.refused.length > 0) {
      throw new SubmitError(
        `--folder ${opts.folder}: ${listing.refused.length} ${listing.refused.length === 1 ? 'entry is' : 'entries are'} not files cpflow can upload: ` +
          firstFew(listing.refused.map((r) => `${r.name} ${r.reason}`)),
      );
    }
    sources = listing.files.map((f) => ({ name: f.name, local: f.local, size: f.size }));
    hidden = listing.hidden;
  } else if (s3Source) {
    for await (const o of listObjects(s3Source.bucket, s3Source.key)) {
      sources.push({ name: o.key.slice(s3Source.key.length), size: o.size, s3: { bucket: s3Source.bucket, key: o.key, etag: o.etag } });
    }
  }
  const where = opts.folder ?? opts.s3Prefix;
  if (sources.length === 0) throw new SubmitError(`no files found in ${where}${hidden.length ? ` (only hidden ones: ${firstFew(hidden)})` : ''}`);
  const grouped = groupFiles(sources, (s) => s.name, opts.grouping, requiredChannels, { skipIncomplete: opts.skipIncomplete });
  if (grouped.sets.length === 0) {
    throw new SubmitError(
      grouped.incomplete.length > 0
        ? `no complete image set in ${where}: ${firstFew(grouped.incomplete.map((i) => `${i.key} lacks ${i.missing.join(', ')}`))}`
        : `the grouping rule matched none of the ${sources.length} files in ${where} (first: ${sources[0]?.name})`,
    );
  }
  checkColumnLimits(grouped.sets);
  const chosen = grouped.sets.flatMap((set) => set.files.map((f) => f.file));
  await checkImageLimits(chosen, opts.uploadConcurrency ?? DEFAULTS.UPLOAD_CONCURRENCY);
  for (const f of chosen) {
    // Not fatal: the set fails alone, with this reason, when analysed. Said now so nobody is surprised.
    if (f.size === 0) process.stderr.write(`warning: ${f.name} is empty; its image set will fail\n`);
  }

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
  const platemap = opts.platemap ? preparePlatemap(opts.platemap, grouped.sets) : undefined;

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

  const base = { project, name, bucket, unmatched: grouped.unmatched, incomplete: grouped.incomplete, hidden, channels: grouped.channels };
  if (existing) {
    await checkAppendedWells(pool, existing.id, grouped.sets);
    const already = await existingSetKeys(pool, existing.id, grouped.sets.map((s) => s.key));
    if (already.length > 0) {
      throw new SubmitError(`--append: ${already.length} image sets are already registered in ${project}/${name}: ${firstFew(already)}; nothing was added`);
    }
    const folder = `${layout.experimentInputs(existing.id)}${appendFolder()}/`;
    const sets = await uploadAndDescribe(grouped.sets, bucket, folder, opts);
    try {
      await appendImageSets(pool, existing.id, sets);
    } catch (err) {
      if (opts.folder !== undefined) await deletePrefix(bucket, folder).catch(() => undefined);
      if (isDuplicateEntry(err)) throw new SubmitError(`--append: another submit registered some of these image sets in ${project}/${name} meanwhile; nothing was added`);
      throw err;
    }
    return { ...base, experimentId: existing.id, engine: existing.engine, imageSets: sets.length, added: sets.length, appended: true, inputPrefix: existing.input_prefix };
  }

  // 4. New experiment: bucket and project, reservation, upload, commit.
  await ensureBucket(bucket);
  const claim = await claimProject(pool, project, bucket);
  if (claim.kind === 'similar-name') throw new SubmitError(similarNameMessage(project, claim.existing));
  if (claim.kind === 'bucket-taken') throw new SubmitError(`bucket ${bucket} belongs to project ${claim.owner}; projects never share a bucket`);
  let pipelineUri: string | null = null;
  let pipelineSha: string | null = null;
  if (pipelineText) {
    // Content-addressed: the same pipeline always lands on the same key with the same bytes.
    pipelineSha = pipelineSha256(pipelineText);
    pipelineUri = (await putBytes(bucket, layout.pipeline(pipelineSha), pipelineText, 'text/plain')).uri;
  }
  const reserved = await reserveExperiment(
    pool,
    {
      projectId: claim.id,
      name,
      pipelineUri,
      pipelineSha256: pipelineSha,
      engine,
      engineOptions: {},
      dispatch: dispatchOptionsSchema.parse(opts.dispatch ?? {}),
      groupingRule: opts.grouping,
      sealed: !opts.open,
      maxFailedFraction: opts.maxFailedFraction ?? DEFAULTS.MAX_FAILED_FRACTION,
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
  try {
    if (replacedExperimentId !== undefined) await deletePrefix(bucket, layout.experimentInputs(replacedExperimentId)).catch(() => undefined);
    const sets = await uploadAndDescribe(grouped.sets, bucket, folder, opts);
    await commitExperiment(pool, experimentId, sets, platemap ? await storePlatemap(bucket, platemap) : undefined);
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

/** Set keys and channel names must fit their columns ("Data too long" is no message for a person). */
function checkColumnLimits(sets: Array<GroupedSet<Source>>): void {
  const longKey = sets.find((s) => [...s.key].length > SET_KEY_MAX);
  if (longKey) throw new SubmitError(`image set key ${longKey.key.slice(0, 40)}… is ${[...longKey.key].length} characters; at most ${SET_KEY_MAX} are allowed`);
  for (const s of sets) {
    const longChannel = s.files.find((f) => [...f.channel].length > CHANNEL_MAX);
    if (longChannel) throw new SubmitError(`channel name ${longChannel.channel.slice(0, 40)}… (${longChannel.file.name}) is longer than ${CHANNEL_MAX} characters`);
  }
}

/**
 * The per-image limits: file size for every file, declared pixels from the headers of local files
 * (S3 objects are checked by the worker before it decodes them). Over-limit images refuse the submit.
 */
async function checkImageLimits(files: Source[], concurrency: number): Promise<void> {
  const limits = imageLimitsConfig();
  const problems = (
    await Readable.from(files)
      .map(async (f: Source) => {
        const problem = f.local ? await imageLimitProblem(f.local, limits) : sizeProblem(f.size, limits);
        return problem ? `${f.name} ${problem}` : undefined;
      }, { concurrency })
      .toArray()
  ).filter((p): p is string => p !== undefined);
  if (problems.length > 0) {
    throw new SubmitError(`${problems.length} ${problems.length === 1 ? 'image exceeds' : 'images exceed'} the per-image limits: ${firstFew(problems, 3)}`);
  }
}

/** Upload a folder's files under `prefix` (S3 sources are registered where they are) and describe the sets. */
async function uploadAndDescribe(sets: Array<GroupedSet<Source>>, bucket: string, prefix: string, opts: SubmitOptions): Promise<NewImageSet[]> {
  const flat = sets.flatMap((set) => set.files.map((f) => f.file));
  const bar = opts.progress && opts.folder ? new SingleBar({ format: 'uploading {bar} {value}/{total} files' }, Presets.shades_classic) : undefined;
  bar?.start(flat.length, 0);
  const stored = new Map<Source, { uri: string; size: number; checksum: string }>();
  try {
    // Node's stream map: bounded concurrency, the one pool cpflow uses for such fan-outs.
    await Readable.from(flat)
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
  return sets.map((set) => ({
    key: set.key,
    metadata: set.metadata,
    files: set.files.map((f) => {
      const s = stored.get(f.file);
      if (!s) throw new Error(`internal: ${f.file.name} was not uploaded`);
      return { channel: f.channel, ...s };
    }),
  }));
}
