import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { SingleBar, Presets } from 'cli-progress';
import { configuredCellProfiler } from '../core/cellprofiler';
import { db, findExperimentByName, findProject, registerExperiment, upsertImageSets, upsertProject, type NewImageSet } from '../core/db';
import { DEFAULTS, dispatchOptionsSchema, type DispatchOptions, type EngineName, type GroupingRule } from '../core/model';
import { groupFiles, type GroupedSet } from '../core/grouping';
import { ensureBucket, layout, listObjects, parseS3Uri, putBytes, putFile, s3Uri } from '../core/s3';
import { parseCppipe, pipelineSha256 } from '../core/pipeline/cppipe';
import { validatePipelineForCpflow } from '../core/pipeline/validate';
import { checkAppendedWells, describePlatemap, preparePlatemap, storePlatemap, type PlatemapRequest } from './platemap';

/**
 * `cpflow submit`: register an experiment from a local folder (uploaded, with checksums) or an S3
 * prefix, with a pipeline and a grouping rule. Everything is checked before anything is written;
 * the experiment and its image sets are then registered in one transaction.
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
  unmatched: string[];
  channels: string[];
  appended: boolean;
  /** One line about the platemap, when one was given. */
  platemap?: string;
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

export async function submit(opts: SubmitOptions): Promise<SubmitResult> {
  if (!opts.folder === !opts.s3Prefix && !opts.append) {
    throw new SubmitError('give exactly one of --folder <dir> or --s3-prefix <s3://bucket/prefix>');
  }
  if (opts.folder && !fs.existsSync(opts.folder)) throw new SubmitError(`--folder ${opts.folder}: no such directory`);

  // 1. The pipeline: parsed and validated before anything is uploaded.
  let pipelineText: string | undefined;
  let requiredChannels: string[] | undefined;
  if (opts.pipelineFile) {
    if (!fs.existsSync(opts.pipelineFile)) throw new SubmitError(`--pipeline ${opts.pipelineFile}: no such file`);
    pipelineText = fs.readFileSync(opts.pipelineFile, 'utf8');
    const info = validatePipelineForCpflow(parseCppipe(pipelineText, opts.pipelineFile));
    requiredChannels = info.channels;
  }
  const engine = resolveEngine(opts.engine, pipelineText !== undefined);
  if (engine === 'cellprofiler' && !pipelineText) throw new SubmitError('--engine cellprofiler needs --pipeline <file.cppipe>');

  // 2. Files → image sets (every set must have every channel the pipeline needs).
  type Source = { name: string; local?: string; s3?: { bucket: string; key: string; size: number; etag: string } };
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
  if (sources.length === 0) throw new SubmitError(`no files found in ${opts.folder ?? opts.s3Prefix}`);
  const grouped = groupFiles(sources, (s) => s.name, opts.grouping, requiredChannels);
  if (grouped.sets.length === 0) {
    throw new SubmitError(
      `the grouping rule matched none of the ${sources.length} files in ${opts.folder ?? opts.s3Prefix} (first: ${sources[0]?.name})`,
    );
  }
  for (const f of sources) {
    if (f.s3?.size === 0 || (f.local && fs.statSync(f.local).size === 0)) {
      // Not fatal: the set fails alone, with this reason, when analysed. Said now so nobody is surprised.
      process.stderr.write(`warning: ${f.name} is empty; its image set will fail\n`);
    }
  }

  if (opts.platemap && opts.append) throw new SubmitError('--platemap is given with the first submit of an experiment, not with --append');
  const platemap = opts.platemap ? preparePlatemap(opts.platemap, grouped.sets) : undefined;

  // 3. Experiment row checks (append vs new) before any upload.
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
  if (existing) await checkAppendedWells(pool, existing.id, grouped.sets);

  // 4. Upload (local folders) and register.
  await ensureBucket(bucket);
  const projectId = existingProject?.id ?? (await upsertProject(pool, opts.project, bucket));
  let pipelineUri: string | null = existing?.pipeline_uri ?? null;
  let pipelineSha: string | null = existing?.pipeline_sha256 ?? null;
  if (pipelineText && !existing) {
    pipelineSha = pipelineSha256(pipelineText);
    pipelineUri = (await putBytes(bucket, layout.pipeline(pipelineSha), pipelineText, 'text/plain')).uri;
  }

  const flat = grouped.sets.flatMap((set) => set.files.map((f) => ({ set, f })));
  const bar = opts.progress && opts.folder ? new SingleBar({ format: 'uploading {bar} {value}/{total} files' }, Presets.shades_classic) : undefined;
  bar?.start(flat.length, 0);
  const uploaded = new Map<Source, { uri: string; size: number; checksum: string }>();
  // Node's stream map: bounded concurrency, the one pool cpflow uses for such fan-outs.
  await Readable.from(flat)
    .map(
    async ({ f }: (typeof flat)[number]) => {
      const src = f.file;
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

  const sets: NewImageSet[] = grouped.sets.map((set: GroupedSet<Source>) => ({
    key: set.key,
    metadata: set.metadata,
    files: set.files.map((f) => {
      const stored = uploaded.get(f.file);
      if (!stored) throw new Error(`internal: ${f.file.name} was not uploaded`);
      return { channel: f.channel, ...stored };
    }),
  }));

  let experimentId: number;
  if (existing) {
    await upsertImageSets(pool, existing.id, sets);
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
        inputPrefix,
        groupingRule: opts.grouping,
        sealed: !opts.open,
        maxFailedFraction: opts.maxFailedFraction ?? DEFAULTS.MAX_FAILED_FRACTION,
        profiles: platemap ? await storePlatemap(bucket, platemap) : undefined,
      },
      sets,
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
    unmatched: grouped.unmatched,
    channels: grouped.channels,
    appended: Boolean(existing),
    ...(platemap ? { platemap: describePlatemap(platemap) } : {}),
  };
}
