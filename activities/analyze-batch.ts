import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { Context } from '@temporalio/activity';
import { DEFAULTS, type ImageSetOutcome, type SetSummary } from '../core/model';
import { layout, parseS3Uri } from '../core/s3';
import { CPFLOW_VERSION, gitCommit, workerIdentity } from '../core/version';
import type { AnalysisDeps } from './analyze';
import { ImageSetInputError, type Engine, type EngineIdentity, type EngineImageSet, type EngineRunResult } from './engines';
import type { ChunkManifest, ManifestSet } from './manifest';
import type { SetProvenance } from './provenance';
import { ExtraColumnPlan, measureImageSet, summaryOf } from './reduce/measure-set';

/**
 * One engine invocation over a batch of image sets: download each set's files from S3 (hashing on
 * the way), run the engine, upload its outputs under the set's deterministic prefix and write
 * provenance.json last as the done marker. Heartbeats carry what it is doing.
 */

export interface BatchRun {
  manifest: ChunkManifest;
  sets: ManifestSet[];
  engine: Engine;
  identity: EngineIdentity;
  attempt: number;
}

export async function runBatch(deps: AnalysisDeps, batch: BatchRun): Promise<ImageSetOutcome[]> {
  const { manifest, sets, engine, identity, attempt } = batch;
  const ctx = Context.current();
  const workRoot = await fs.promises.mkdtemp(path.join(deps.workDir(), `cpflow-${manifest.experimentId}-`));
  const startedAt = new Date().toISOString();
  let lastDetail = 'downloading';
  const beat = setInterval(() => ctx.heartbeat({ detail: lastDetail }), DEFAULTS.ANALYSIS_HEARTBEAT_EVERY_MS);
  try {
    // No heartbeat at the start: a set that takes milliseconds (the no-op engine, small images) would
    // pay one more Temporal round trip for nothing; the first one goes out after ANALYSIS_HEARTBEAT_EVERY_MS.
    const inputDir = path.join(workRoot, 'in');
    const outDir = path.join(workRoot, `out-attempt-${attempt}`);
    const tmpDir = path.join(workRoot, 'tmp');
    await Promise.all([inputDir, outDir, tmpDir].map((d) => fs.promises.mkdir(d, { recursive: true })));

    // Every input of the batch downloads at once (bounded): a batch's transfers overlap each other,
    // and the worker's extra activity slots overlap them with other activities' engine runs.
    const downloaded = await allSettledInOrder(sets, DEFAULTS.TRANSFER_CONCURRENCY, (set) => downloadSet(deps, set, path.join(inputDir, set.key)));
    const engineSets: EngineImageSet[] = [];
    const inputsBySet = new Map<number, SetProvenance['inputs']>();
    sets.forEach((set, i) => {
      inputsBySet.set(set.id, downloaded[i].inputs);
      engineSets.push({ key: set.key, metadata: set.metadata, files: downloaded[i].files, imageNumber: set.id });
    });

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
    try {
      lastDetail = `running ${identity.name} on ${sets.map((s) => s.key).join(', ')}`;
      result = await engine.run({
        imageSets: engineSets,
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

    lastDetail = 'uploading outputs';
    for (const set of sets) {
      if (!result.sets.some((r) => r.key === set.key)) throw new Error(`engine ${identity.name} returned no output for image set ${set.key}`);
    }
    const outcomes = await allSettledInOrder(sets, DEFAULTS.TRANSFER_CONCURRENCY, (set) => {
      const produced = result.sets.find((r) => r.key === set.key)?.files ?? [];
      return uploadSet(deps, batch, set, path.join(outDir, set.key), produced, { inputs: inputsBySet.get(set.id) ?? [], startedAt });
    });
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
  const localNames = new Set<string>();
  const targets = set.files.map((f) => {
    const { bucket, key } = parseS3Uri(f.uri);
    // Keep the original file name: CellProfiler pipelines match channels by name.
    let local = path.join(setDir, path.posix.basename(key));
    if (localNames.has(local)) local = path.join(setDir, `${f.channel}-${path.posix.basename(key)}`);
    localNames.add(local);
    return { f, bucket, key, local };
  });
  const got = await allSettledInOrder(targets, targets.length, (t) => deps.store.downloadIfExists(t.bucket, t.key, t.local));
  const files: EngineImageSet['files'] = [];
  const inputs: SetProvenance['inputs'] = [];
  targets.forEach(({ f, local }, i) => {
    const file = got[i];
    if (!file) throw new ImageSetInputError(`image set ${set.key}: missing image ${f.uri} (channel ${f.channel})`, set.key);
    if (file.size === 0) throw new ImageSetInputError(`image set ${set.key}: empty image ${f.uri} (channel ${f.channel})`, set.key);
    inputs.push({ channel: f.channel, uri: f.uri, size: file.size, checksum: f.checksum, sha256: file.sha256 });
    files.push({ channel: f.channel, path: local });
  });
  return { files, inputs };
}

async function uploadSet(
  deps: AnalysisDeps,
  batch: BatchRun,
  set: ManifestSet,
  localDir: string,
  produced: string[],
  record: { inputs: SetProvenance['inputs']; startedAt: string },
): Promise<ImageSetOutcome> {
  const { manifest, identity, attempt } = batch;
  const prefix = layout.setPrefix(manifest.experimentId, set.key);
  const names = [...produced].sort().filter((name) => name !== 'provenance.json');
  const outputs: SetProvenance['outputs'] = await allSettledInOrder(names, names.length, async (name) => ({
    name,
    ...(await deps.store.putFile(manifest.bucket, `${prefix}${name}`, path.join(localDir, name), {
      contentType: name.endsWith('.csv') ? 'text/csv' : undefined,
    })),
  }));
  // The set's summary.csv contribution, measured here from the tables just written (no S3 reads),
  // travels with the outcome into MariaDB so the reduce need not read every set's tables back.
  const summary = await summaryOfLocalTables(set, localDir, names);
  const provenance: SetProvenance = {
    kind: 'cpflow.image-set-provenance/v1',
    experimentId: manifest.experimentId,
    imageSet: { id: set.id, key: set.key, metadata: set.metadata },
    engine: identity,
    pipelineSha256: manifest.pipelineSha256,
    inputs: record.inputs,
    outputs,
    cpflow: { version: CPFLOW_VERSION, gitCommit: gitCommit() },
    worker: { ...workerIdentity(), attempt },
    startedAt: record.startedAt,
    finishedAt: new Date().toISOString(),
    summary,
  };
  // Written last: its presence means every output above is complete.
  const marker = await deps.store.putBytes(manifest.bucket, `${prefix}provenance.json`, JSON.stringify(provenance, null, 2), 'application/json');
  return {
    imageSetId: set.id,
    status: 'done',
    attempts: attempt,
    skipped: false,
    outputPrefix: prefix,
    results: [
      ...outputs.map((o) => ({ kind: kindOf(o.name), uri: o.uri, size: o.size, checksum: o.checksum })),
      { kind: 'provenance', uri: marker.uri, size: marker.size, checksum: marker.checksum },
    ],
    summary,
  };
}

/** What the reduce would measure from this set's tables (measure-set.ts), read from the local copies. */
async function summaryOfLocalTables(set: ManifestSet, localDir: string, names: string[]): Promise<SetSummary> {
  const measured = await measureImageSet(
    {
      key: set.key,
      status: 'done',
      metadata: set.metadata,
      tables: names.filter((n) => n.endsWith('.csv')).map((name) => ({ name, open: async () => fs.createReadStream(path.join(localDir, name)) })),
    },
    new ExtraColumnPlan([]),
    undefined,
  );
  return summaryOf(measured);
}

/** The result_file kind of an output: `table:<Name>` for tables, `file:<ext>` for the rest. */
export function kindOf(name: string): string {
  if (name === 'provenance.json') return 'provenance';
  if (name.endsWith('.csv')) return `table:${name.slice(0, -4)}`;
  return `file:${path.extname(name).slice(1) || 'bin'}`;
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
