import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { Context } from '@temporalio/activity';
import { imageLimitsConfig } from '../core/config';
import { pixelProblem, readImageHeader, sizeProblem } from '../core/image-limits';
import { DEFAULTS, type ImageSetOutcome, type ResultFileRecord, type SetSummary } from '../core/model';
import { layout, parseS3Uri, s3Uri, type StoredObject } from '../core/s3';
import { CPFLOW_VERSION, gitCommit, workerIdentity } from '../core/version';
import type { AnalysisDeps } from './analyze';
import { ImageSetInputError, SHARED_OUTPUTS_DIR, type Engine, type EngineIdentity, type EngineImageSet, type EngineRunResult } from './engines';
import type { ChunkManifest, ManifestSet } from './manifest';
import type { GroupProvenance, SetProvenance } from './provenance';
import { ExtraColumnPlan, measureImageSet, summaryOf } from './reduce/measure-set';

/**
 * One engine invocation over a batch of image sets, or over one whole group: download each set's
 * files from S3 (hashing on the way), run the engine, upload its outputs under the set's
 * deterministic prefix (the group's outputs under the group's prefix) and write provenance.json last
 * as the done marker (per set, then the group's). Heartbeats carry what it is doing.
 */

export interface BatchRun {
  manifest: ChunkManifest;
  sets: ManifestSet[];
  engine: Engine;
  identity: EngineIdentity;
  attempt: number;
  /** The sets are one group of a grouped stage. */
  group?: { key: string; metadata: Record<string, string> };
}

/**
 * A batch of unrelated sets produced files no single set's row names (SaveImages that records no
 * path, or two sets writing one file name): they cannot be attributed, so the caller runs the sets
 * one by one (with one set every file is its own). Nothing of the batch was uploaded.
 */
export class UnattributedOutputsError extends Error {
  constructor(readonly files: string[]) {
    super(`outputs named by no single image set: ${files.slice(0, 5).join(', ')}${files.length > 5 ? ` (+${files.length - 5})` : ''}`);
    this.name = 'UnattributedOutputsError';
  }
}

export async function runBatch(deps: AnalysisDeps, batch: BatchRun): Promise<ImageSetOutcome[]> {
  const { manifest, sets, engine, identity, attempt, group } = batch;
  const ctx = Context.current();
  const workRoot = await fs.promises.mkdtemp(path.join(deps.workDir(), `cpflow-${manifest.experimentId}-`));
  const startedAt = new Date().toISOString();
  let lastDetail = 'downloading';
  const beat = setInterval(() => ctx.heartbeat({ detail: lastDetail }), DEFAULTS.ANALYSIS_HEARTBEAT_EVERY_MS);
  try {
    ctx.heartbeat({ detail: lastDetail });
    const inputDir = path.join(workRoot, 'in');
    const outDir = path.join(workRoot, `out-attempt-${attempt}`);
    const tmpDir = path.join(workRoot, 'tmp');
    await Promise.all([inputDir, outDir, tmpDir].map((d) => fs.promises.mkdir(d, { recursive: true })));

    // Every input of the batch downloads at once (bounded): a batch's transfers overlap each other,
    // and the worker's extra activity slots overlap them with other activities' engine runs.
    if (sets.length > 1) lastDetail = `downloading ${sets.length} image sets`;
    const downloads = await allSettledInOrder(sets, DEFAULTS.TRANSFER_CONCURRENCY, (set) => downloadSet(deps, set, path.join(inputDir, set.key)));
    const engineSets: EngineImageSet[] = [];
    const inputsBySet = new Map<number, SetProvenance['inputs']>();
    for (const [i, set] of sets.entries()) {
      const downloaded = downloads[i]!;
      inputsBySet.set(set.id, downloaded.inputs);
      engineSets.push({
        key: set.key,
        metadata: set.metadata,
        files: downloaded.files,
        imageNumber: set.id,
        outputUri: s3Uri(manifest.bucket, layout.setPrefix(manifest.experimentId, set.key, manifest.stage)),
      });
    }

    let pipelinePath: string | undefined;
    if (manifest.pipelineUri) {
      const { bucket, key } = parseS3Uri(manifest.pipelineUri);
      pipelinePath = path.join(workRoot, 'pipeline.cppipe');
      await deps.store.downloadToFile(bucket, key, pipelinePath);
    }

    // The engine itself runs only in one of this worker's engine slots (CPFLOW_ANALYZE_SLOTS).
    lastDetail = 'waiting for an analysis slot';
    const release = deps.engineSlots ? await deps.engineSlots().acquire(ctx.cancellationSignal) : () => undefined;
    let result: EngineRunResult;
    const engineStarted = Date.now();
    try {
      lastDetail = `running ${identity.name} on ${group ? `group ${group.key} (${sets.length} image sets)` : sets.map((s) => s.key).join(', ')}`;
      result = await engine.run({
        imageSets: engineSets,
        grouping: group
          ? { ...group, outputUri: s3Uri(manifest.bucket, layout.groupPrefix(manifest.experimentId, group.key, manifest.stage)) }
          : undefined,
        pipelinePath,
        outDir,
        tmpDir,
        signal: ctx.cancellationSignal,
        timeoutMs: manifest.dispatch.engineTimeoutSeconds * 1000,
        onProgress: (detail) => {
          lastDetail = detail;
        },
      });
    } finally {
      release();
    }
    // What adaptive batching measures: the invocation's wall time, shared by its sets.
    const engineSeconds = (Date.now() - engineStarted) / 1000 / sets.length;
    if (!group && sets.length > 1 && (result.shared?.length ?? 0) > 0) throw new UnattributedOutputsError(result.shared ?? []);

    lastDetail = 'uploading outputs';
    for (const set of sets) {
      if (!result.sets.some((r) => r.key === set.key)) throw new Error(`engine ${identity.name} returned no output for image set ${set.key}`);
    }
    const uploaded = await allSettledInOrder(sets, DEFAULTS.TRANSFER_CONCURRENCY, (set) =>
      uploadSet(deps, batch, set, path.join(outDir, set.key), result.sets.find((r) => r.key === set.key)?.files ?? [], {
        inputs: inputsBySet.get(set.id) ?? [],
        startedAt,
        warnings: result.warnings ?? [],
        engineSeconds,
      }),
    );
    const outcomes = uploaded.map((u) => u.outcome);
    if (group) {
      const groupResults = await uploadGroup(deps, batch, group, path.join(outDir, SHARED_OUTPUTS_DIR), result, uploaded, startedAt);
      // Group outputs belong to no single set: they ride on the group's first outcome to the mirror.
      const first = outcomes[0];
      if (first) first.groupResults = groupResults;
    }
    return outcomes;
  } finally {
    clearInterval(beat);
    await fs.promises.rm(workRoot, { recursive: true, force: true });
  }
}

async function downloadSet(
  deps: AnalysisDeps,
  set: ManifestSet,
  setDir: string,
): Promise<{ files: EngineImageSet['files']; inputs: SetProvenance['inputs'] }> {
  await fs.promises.mkdir(setDir, { recursive: true });
  const limits = imageLimitsConfig();
  const files: EngineImageSet['files'] = [];
  const inputs: SetProvenance['inputs'] = [];
  for (const f of set.files) {
    const { bucket, key } = parseS3Uri(f.uri);
    const refused = (problem: string): ImageSetInputError =>
      new ImageSetInputError(`image set ${set.key}: image ${f.uri} (channel ${f.channel}) ${problem}`, set.key);
    // The registered size first: an over-limit file is not even downloaded.
    const registeredTooBig = sizeProblem(f.size, limits);
    if (registeredTooBig) throw refused(registeredTooBig);
    // Keep the original file name: CellProfiler pipelines match channels by name.
    let local = path.join(setDir, path.posix.basename(key));
    if (files.some((x) => x.path === local)) local = path.join(setDir, `${f.channel.replace(/[^A-Za-z0-9_-]/g, '_')}-${path.posix.basename(key)}`);
    const got = await deps.store.downloadIfExists(bucket, key, local);
    if (!got) throw refused('is missing');
    if (got.size === 0) throw refused('is empty');
    // What is analysed must be what was registered: an input overwritten since fails its set, never
    // silently yields numbers from other images.
    const mismatch = checksumMismatch(f.checksum, got);
    if (mismatch) throw refused(`changed since it was registered: registered ${f.checksum}, found ${mismatch}`);
    const tooBig = sizeProblem(got.size, limits);
    if (tooBig) throw refused(tooBig);
    // Declared dimensions from the header, before any engine decodes a pixel.
    const header = await readImageHeader(local);
    const tooManyPixels = header ? pixelProblem(header, limits) : undefined;
    if (tooManyPixels) throw refused(tooManyPixels);
    inputs.push({ channel: f.channel, uri: f.uri, size: got.size, checksum: f.checksum, sha256: got.sha256 });
    files.push({ channel: f.channel, path: local, sourceUri: f.uri });
  }
  return { files, inputs };
}

/**
 * The downloaded object's checksum when it differs from the registered one, in the registered form.
 * `sha256:` checksums (uploaded by cpflow or a lab system) are compared with the bytes just hashed;
 * `etag:` ones (objects registered in place with --s3-prefix) with the ETag S3 returned with them.
 */
export function checksumMismatch(registered: string, got: { sha256: string; etag?: string }): string | undefined {
  const [kind, value] = [registered.slice(0, registered.indexOf(':')), registered.slice(registered.indexOf(':') + 1)];
  if (kind === 'sha256') return value === got.sha256 ? undefined : `sha256:${got.sha256}`;
  if (kind === 'etag' && got.etag !== undefined) return value === got.etag ? undefined : `etag:${got.etag}`;
  return undefined; // a form this worker cannot verify (e.g. a lab system's own): nothing to compare
}

async function uploadSet(
  deps: AnalysisDeps,
  batch: BatchRun,
  set: ManifestSet,
  localDir: string,
  produced: string[],
  record: { inputs: SetProvenance['inputs']; startedAt: string; warnings: string[]; engineSeconds: number },
): Promise<{ set: ManifestSet; outcome: ImageSetOutcome; record: GroupProvenance['sets'][number] }> {
  const { manifest, identity, attempt, group } = batch;
  const prefix = layout.setPrefix(manifest.experimentId, set.key, manifest.stage);
  const outputs = await uploadFiles(deps, manifest.bucket, prefix, localDir, produced);
  // The set's summary.csv contribution, measured here from the tables just written (no S3 reads),
  // travels with the outcome into MariaDB so the reduce need not read every set's tables back.
  const summary = await summaryOfLocalTables(set, localDir, outputs.map((o) => o.name));
  const provenance: SetProvenance = {
    kind: 'cpflow.image-set-provenance/v1',
    experimentId: manifest.experimentId,
    ...(manifest.stage ? { stage: manifest.stage } : {}),
    imageSet: { id: set.id, key: set.key, metadata: set.metadata },
    ...(group
      ? { group: { key: group.key, provenanceUri: s3Uri(manifest.bucket, `${layout.groupPrefix(manifest.experimentId, group.key, manifest.stage)}provenance.json`) } }
      : {}),
    engine: identity,
    pipelineSha256: manifest.pipelineSha256,
    inputs: record.inputs,
    outputs,
    ...(record.warnings.length > 0 ? { warnings: record.warnings } : {}),
    cpflow: { version: CPFLOW_VERSION, gitCommit: gitCommit() },
    worker: { ...workerIdentity(), attempt },
    startedAt: record.startedAt,
    finishedAt: new Date().toISOString(),
    summary,
  };
  // Written last: its presence means every output above is complete.
  const marker = await deps.store.putBytes(manifest.bucket, `${prefix}provenance.json`, JSON.stringify(provenance, null, 2), 'application/json');
  const outcome: ImageSetOutcome = {
    imageSetId: set.id,
    status: 'done',
    attempts: attempt,
    skipped: false,
    outputPrefix: prefix,
    results: [
      ...outputs.map((o) => ({ kind: kindOf(o.name), uri: o.uri, size: o.size, checksum: o.checksum })),
      { kind: 'provenance', uri: marker.uri, size: marker.size, checksum: marker.checksum },
    ],
    ...(record.warnings.length > 0 ? { warnings: record.warnings } : {}),
    summary,
    engineSeconds: record.engineSeconds,
  };
  return {
    set,
    outcome,
    record: {
      id: set.id,
      key: set.key,
      inputs: record.inputs,
      outputs,
      provenance: { uri: marker.uri, size: marker.size, checksum: marker.checksum },
      ...(record.warnings.length > 0 ? { warnings: record.warnings } : {}),
    },
  };
}

/** Uploads the group's own outputs, then the group's provenance.json (its done marker) last. */
async function uploadGroup(
  deps: AnalysisDeps,
  batch: BatchRun,
  group: NonNullable<BatchRun['group']>,
  sharedDir: string,
  result: EngineRunResult,
  uploaded: Array<{ record: GroupProvenance['sets'][number] }>,
  startedAt: string,
): Promise<ResultFileRecord[]> {
  const { manifest, identity, attempt } = batch;
  const prefix = layout.groupPrefix(manifest.experimentId, group.key, manifest.stage);
  const outputs = await uploadFiles(deps, manifest.bucket, prefix, sharedDir, result.shared ?? []);
  const provenance: GroupProvenance = {
    kind: 'cpflow.group-provenance/v1',
    experimentId: manifest.experimentId,
    stage: manifest.stage,
    group,
    engine: identity,
    pipelineSha256: manifest.pipelineSha256,
    sets: uploaded.map((u) => u.record),
    outputs,
    cpflow: { version: CPFLOW_VERSION, gitCommit: gitCommit() },
    worker: { ...workerIdentity(), attempt },
    startedAt,
    finishedAt: new Date().toISOString(),
  };
  const marker = await deps.store.putBytes(manifest.bucket, `${prefix}provenance.json`, JSON.stringify(provenance, null, 2), 'application/json');
  return [
    ...outputs.map((o) => ({ kind: `group-${kindOf(o.name)}`, uri: o.uri, size: o.size, checksum: o.checksum })),
    { kind: 'group-provenance', uri: marker.uri, size: marker.size, checksum: marker.checksum },
  ];
}

async function uploadFiles(
  deps: AnalysisDeps,
  bucket: string,
  prefix: string,
  localDir: string,
  names: string[],
): Promise<Array<{ name: string } & StoredObject>> {
  const wanted = [...names].sort().filter((name) => name !== 'provenance.json');
  return allSettledInOrder(wanted, DEFAULTS.TRANSFER_CONCURRENCY, async (name) => ({
    name: name.split(path.sep).join('/'),
    ...(await deps.store.putFile(bucket, `${prefix}${name.split(path.sep).join('/')}`, path.join(localDir, name), {
      contentType: name.endsWith('.csv') ? 'text/csv' : undefined,
    })),
  }));
}

/** The result_file kind of an output: `table:<Name>` for tables, `file:<ext>` for the rest. */
export function kindOf(name: string): string {
  if (name === 'provenance.json') return 'provenance';
  if (name.endsWith('.csv')) return `table:${path.posix.basename(name).slice(0, -4)}`;
  return `file:${path.extname(name).slice(1) || 'bin'}`;
}

/** What the reduce would measure from this set's tables (measure-set.ts), read from the local copies. */
async function summaryOfLocalTables(set: ManifestSet, localDir: string, names: string[]): Promise<SetSummary> {
  const measured = await measureImageSet(
    {
      key: set.key,
      status: 'done',
      metadata: set.metadata,
      tables: names.filter((n) => n.endsWith('.csv') && !n.includes('/')).map((name) => ({ name, open: async () => fs.createReadStream(path.join(localDir, name)) })),
    },
    new ExtraColumnPlan([]),
    undefined,
  );
  return summaryOf(measured);
}

/**
 * `fn` over `items`, at most `concurrency` at once, results in input order. Unlike Promise.all it
 * waits for every call to settle before throwing the first error (in input order), so no transfer
 * is still writing into the scratch folder when the caller removes it.
 */
async function allSettledInOrder<T, R>(items: T[], concurrency: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  let settled: PromiseSettledResult<R>[];
  if (items.length <= concurrency) {
    settled = await Promise.allSettled(items.map(fn));
  } else {
    settled = (await Readable.from(items)
      .map((item: T) => Promise.allSettled([fn(item)]).then(([r]) => r), { concurrency: Math.max(1, concurrency) })
      .toArray()) as PromiseSettledResult<R>[];
  }
  const values: R[] = [];
  for (const s of settled) {
    if (s.status === 'rejected') throw s.reason;
    values.push(s.value);
  }
  return values;
}
