import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Context, ApplicationFailure } from '@temporalio/activity';
import { workerConfig } from './lib/config';
import { downloadIfExists, downloadToFile, getBytesIfExists, layout, parseS3Uri, putBytes, putFile, s3Uri } from './lib/s3';
import { CPFLOW_VERSION, gitCommit, workerIdentity } from './lib/version';
import { DatabaseUnavailableError, type ImageSetOutcome } from './lib/db';
import { readChunkManifest, type ChunkManifest } from './manifest';
import { engineFor, EngineUnavailableError, ImageSetInputError, type EngineIdentity, type EngineImageSet } from './engines';
import { provenanceSchema, type SetProvenance } from './provenance';
import { sameEnvironment } from './engines/cellprofiler-environment';

/**
 * analyzeImageSets: the per-image-set unit of work. Downloads the set's files from S3, runs the
 * engine, uploads its tables under the set's deterministic prefix and writes provenance.json last as
 * the done marker. A set whose provenance already matches its inputs, pipeline and engine is skipped.
 */

/** Attempts an engine failure (not an input error, not an outage) gets before its sets are failed. */
export const DEFAULT_ENGINE_ATTEMPTS = 3;

const TRANSIENT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/** S3 or database unavailable, throttling or 5xx: worth retrying without limit. */
export function isInfrastructureError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err instanceof DatabaseUnavailableError) return true;
  const e = err as Error & { code?: string; $metadata?: { httpStatusCode?: number }; $retryable?: unknown; sqlState?: string; fatal?: boolean };
  if (e.code && TRANSIENT_CODES.has(e.code)) return true;
  if (/ECONNREFUSED|ECONNRESET|ETIMEDOUT|socket hang up/.test(e.message)) return true;
  if (e.name === 'TimeoutError' || e.name === 'SlowDown' || e.$retryable) return true;
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined && (status >= 500 || status === 429)) return true;
  return e.fatal === true; // a mariadb connection that died
}

export interface AnalyzeInput {
  bucket: string;
  manifestKey: string;
  /** Positions in the chunk manifest: one set, or several run in one engine invocation. */
  indices: number[];
  /** Attempts an engine failure gets (default DEFAULT_ENGINE_ATTEMPTS). */
  maxEngineAttempts?: number;
}

type ManifestSet = ChunkManifest['sets'][number];

const HEARTBEAT_MS = 2_000;

export async function analyzeImageSets(input: AnalyzeInput): Promise<ImageSetOutcome[]> {
  const ctx = Context.current();
  const manifest = await readChunkManifest(input.bucket, input.manifestKey);
  const sets = input.indices.map((i) => {
    const s = manifest.sets[i];
    if (!s) throw ApplicationFailure.nonRetryable(`manifest ${input.manifestKey} has no image set at index ${i}`);
    return s;
  });
  const attempt = ctx.info.attempt;

  let engine;
  try {
    engine = engineFor({ engine: manifest.engine, ...manifest.engineOptions });
  } catch (err) {
    if (err instanceof EngineUnavailableError) throw ApplicationFailure.nonRetryable(err.message, 'EngineUnavailable');
    throw err;
  }
  const identity = await engine.identity();

  const outcomes: ImageSetOutcome[] = [];
  const toRun: ManifestSet[] = [];
  for (const set of sets) {
    const finished = await matchingProvenance(manifest, set, identity);
    if (finished) {
      outcomes.push({
        imageSetId: set.id,
        status: 'done',
        attempts: attempt,
        skipped: true,
        outputPrefix: layout.setPrefix(manifest.experimentId, set.key),
        // The same rows a fresh run records, provenance.json included: a set whose first run wrote
        // its outputs but never reported back (worker killed) must not end with its marker unrecorded.
        results: [
          ...finished.provenance.outputs.map((o) => ({ kind: kindOf(o.name), uri: o.uri, size: o.size, checksum: o.checksum })),
          { kind: 'provenance', ...finished.marker },
        ],
      });
    } else {
      toRun.push(set);
    }
  }
  if (toRun.length === 0) return outcomes;

  const runSets = async (batch: ManifestSet[]): Promise<ImageSetOutcome[]> => runBatch(manifest, batch, identity, attempt);
  try {
    outcomes.push(...(await runSets(toRun)));
  } catch (err) {
    if (err instanceof ImageSetInputError && toRun.length > 1) {
      // One bad set must not fail its batch neighbours: rerun them one by one to find it.
      for (const set of toRun) {
        try {
          outcomes.push(...(await runSets([set])));
        } catch (single) {
          if (single instanceof ImageSetInputError) outcomes.push(failedOutcome(manifest, set, attempt, single));
          else throw single;
        }
      }
    } else if (err instanceof ImageSetInputError) {
      const set = toRun[0];
      if (!set) throw err;
      // Input errors are final for the set: non-retryable, so Temporal does not retry a file that will
      // never decode; the workflow records the reason on the image set and carries on with the others.
      throw ApplicationFailure.nonRetryable(err.message, 'ImageSetInputError', { setKey: set.key, attempt });
    } else if (!isInfrastructureError(err) && attempt >= (input.maxEngineAttempts ?? DEFAULT_ENGINE_ATTEMPTS)) {
      // The engine itself keeps failing on these sets (crash, timeout, pipeline error it did not
      // classify): give up on them after a few attempts. Infrastructure errors are not counted: they
      // retry (with backoff) for as long as S3 or the database is away, so an outage fails nothing.
      const message = err instanceof Error ? err.message : String(err);
      throw ApplicationFailure.nonRetryable(message, 'EngineFailure', { setKey: toRun.map((s) => s.key).join(', '), attempt });
    } else {
      throw err;
    }
  }
  return outcomes;
}

function failedOutcome(manifest: ChunkManifest, set: ManifestSet, attempt: number, err: Error): ImageSetOutcome {
  return {
    imageSetId: set.id,
    status: 'failed',
    attempts: attempt,
    outputPrefix: layout.setPrefix(manifest.experimentId, set.key),
    error: err.message,
  };
}

async function runBatch(
  manifest: ChunkManifest,
  sets: ManifestSet[],
  identity: EngineIdentity,
  attempt: number,
): Promise<ImageSetOutcome[]> {
  const ctx = Context.current();
  const engine = engineFor({ engine: manifest.engine, ...manifest.engineOptions });
  const workRoot = await fs.promises.mkdtemp(path.join(workerConfig().CPFLOW_WORK_DIR, `cpflow-${manifest.experimentId}-`));
  const startedAt = new Date().toISOString();
  let lastDetail = 'downloading';
  const beat = setInterval(() => ctx.heartbeat({ detail: lastDetail }), HEARTBEAT_MS);
  try {
    ctx.heartbeat({ detail: lastDetail });
    const inputDir = path.join(workRoot, 'in');
    const outDir = path.join(workRoot, `out-attempt-${attempt}`);
    const tmpDir = path.join(workRoot, 'tmp');
    await Promise.all([inputDir, outDir, tmpDir].map((d) => fs.promises.mkdir(d, { recursive: true })));

    const engineSets: EngineImageSet[] = [];
    const inputsBySet = new Map<number, SetProvenance['inputs']>();
    for (const set of sets) {
      const setDir = path.join(inputDir, set.key);
      await fs.promises.mkdir(setDir, { recursive: true });
      const files: EngineImageSet['files'] = [];
      const inputs: SetProvenance['inputs'] = [];
      for (const f of set.files) {
        const { bucket, key } = parseS3Uri(f.uri);
        // Keep the original file name: CellProfiler pipelines match channels by name.
        let local = path.join(setDir, path.posix.basename(key));
        if (files.some((x) => x.path === local)) local = path.join(setDir, `${f.channel}-${path.posix.basename(key)}`);
        const got = await downloadIfExists(bucket, key, local);
        if (!got) throw new ImageSetInputError(`image set ${set.key}: missing image ${f.uri} (channel ${f.channel})`, set.key);
        if (got.size === 0) throw new ImageSetInputError(`image set ${set.key}: empty image ${f.uri} (channel ${f.channel})`, set.key);
        inputs.push({ channel: f.channel, uri: f.uri, size: got.size, checksum: f.checksum, sha256: got.sha256 });
        files.push({ channel: f.channel, path: local });
      }
      inputsBySet.set(set.id, inputs);
      engineSets.push({ key: set.key, metadata: set.metadata, files, imageNumber: set.id });
    }

    let pipelinePath: string | undefined;
    if (manifest.pipelineUri) {
      const { bucket, key } = parseS3Uri(manifest.pipelineUri);
      pipelinePath = path.join(workRoot, 'pipeline.cppipe');
      await downloadToFile(bucket, key, pipelinePath);
    }

    lastDetail = `running ${identity.name} on ${sets.map((s) => s.key).join(', ')}`;
    const result = await engine.run({
      imageSets: engineSets,
      pipelinePath,
      outDir,
      tmpDir,
      signal: ctx.cancellationSignal,
      onProgress: (detail) => {
        lastDetail = detail;
      },
    });

    lastDetail = 'uploading outputs';
    const outcomes: ImageSetOutcome[] = [];
    for (const set of sets) {
      const produced = result.sets.find((r) => r.key === set.key);
      if (!produced) throw new Error(`engine ${identity.name} returned no output for image set ${set.key}`);
      const prefix = layout.setPrefix(manifest.experimentId, set.key);
      const outputs: SetProvenance['outputs'] = [];
      for (const name of [...produced.files].sort()) {
        if (name === 'provenance.json') continue;
        const stored = await putFile(manifest.bucket, `${prefix}${name}`, path.join(outDir, set.key, name), {
          contentType: name.endsWith('.csv') ? 'text/csv' : undefined,
        });
        outputs.push({ name, ...stored });
      }
      const provenance: SetProvenance = {
        kind: 'cpflow.image-set-provenance/v1',
        experimentId: manifest.experimentId,
        imageSet: { id: set.id, key: set.key, metadata: set.metadata },
        engine: identity,
        pipelineSha256: manifest.pipelineSha256,
        inputs: inputsBySet.get(set.id) ?? [],
        outputs,
        cpflow: { version: CPFLOW_VERSION, gitCommit: gitCommit() },
        worker: { ...workerIdentity(), attempt },
        startedAt,
        finishedAt: new Date().toISOString(),
      };
      // Written last: its presence means every output above is complete.
      const prov = await putBytes(manifest.bucket, `${prefix}provenance.json`, JSON.stringify(provenance, null, 2), 'application/json');
      outcomes.push({
        imageSetId: set.id,
        status: 'done',
        attempts: attempt,
        skipped: false,
        outputPrefix: prefix,
        results: [
          ...outputs.map((o) => ({ kind: kindOf(o.name), uri: o.uri, size: o.size, checksum: o.checksum })),
          { kind: 'provenance', uri: prov.uri, size: prov.size, checksum: prov.checksum },
        ],
      });
    }
    return outcomes;
  } finally {
    clearInterval(beat);
    await fs.promises.rm(workRoot, { recursive: true, force: true });
  }
}

/** The set's provenance.json, if it proves this exact work was already done. */
export async function matchingProvenance(
  manifest: ChunkManifest,
  set: ManifestSet,
  identity: EngineIdentity,
): Promise<{ provenance: SetProvenance; marker: { uri: string; size: number; checksum: string } } | undefined> {
  const markerKey = `${layout.setPrefix(manifest.experimentId, set.key)}provenance.json`;
  const raw = await getBytesIfExists(manifest.bucket, markerKey);
  if (!raw) return undefined;
  const parsed = provenanceSchema.safeParse(JSON.parse(raw.toString('utf8')));
  if (!parsed.success) return undefined;
  const p = parsed.data;
  if (p.engine.name !== identity.name || p.engine.version !== identity.version) return undefined;
  // Same build in another environment (packages, Python) is not the same work.
  if (!sameEnvironment(p.engine.environment, identity.environment)) return undefined;
  if (p.pipelineSha256 !== manifest.pipelineSha256) return undefined;
  if (p.inputs.length !== set.files.length) return undefined;
  for (const f of set.files) {
    const recorded = p.inputs.find((i) => i.channel === f.channel);
    if (!recorded || recorded.checksum !== f.checksum || recorded.uri !== f.uri) return undefined;
  }
  const marker = {
    uri: s3Uri(manifest.bucket, markerKey),
    size: raw.length,
    checksum: `sha256:${crypto.createHash('sha256').update(raw).digest('hex')}`,
  };
  return { provenance: p, marker };
}

function kindOf(name: string): string {
  if (name === 'provenance.json') return 'provenance';
  if (name.endsWith('.csv')) return `table:${name.slice(0, -4)}`;
  return `file:${path.extname(name).slice(1) || 'bin'}`;
}

