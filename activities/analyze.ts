import crypto from 'node:crypto';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { workerConfig } from '../core/config';
import { isInfrastructureError } from '../core/errors';
import type { AnalysisActivities, AnalyzeInput, ImageSetOutcome } from '../core/model';
import { layout, s3Store, s3Uri, type ObjectStore } from '../core/s3';
import { runBatch, kindOf } from './analyze-batch';
import { engineSlots, type EngineSlots } from './engine-slots';
import { engineFor, EngineUnavailableError, ImageSetInputError, type Engine, type EngineIdentity, type EngineSelection } from './engines';
import { createManifestReader, type ChunkManifest, type ManifestReader, type ManifestSet } from './manifest';
import { provenanceSchema, type SetProvenance } from './provenance';

/**
 * analyzeImageSets: the per-image-set unit of work. Skips the sets whose provenance.json proves the
 * work was done; runs the rest in one engine invocation (analyze-batch.ts); when an input error hits
 * a batch, reruns its sets one by one so one bad set fails alone; caps engine failures at the
 * experiment's maxEngineAttempts, while outages retry without limit.
 */

/** What the activity needs from the world; tests replace them with in-memory fakes. */
export interface AnalysisDeps {
  store: ObjectStore;
  readManifest: ManifestReader;
  engineFor: (selection: EngineSelection) => Engine;
  /** Parent of each attempt's scratch folder. */
  workDir: () => string;
  /** Engine invocations at once in this process (CPFLOW_ANALYZE_SLOTS); unset: no limit beyond the activity slots. */
  engineSlots?: () => EngineSlots;
}

export function defaultAnalysisDeps(store: ObjectStore = s3Store): AnalysisDeps {
  return { store, readManifest: createManifestReader(store), engineFor, workDir: () => workerConfig().CPFLOW_WORK_DIR, engineSlots };
}

export function createAnalysisActivities(deps: AnalysisDeps = defaultAnalysisDeps()): AnalysisActivities {
  return { analyzeImageSets: (input) => analyzeImageSets(deps, input) };
}

async function analyzeImageSets(deps: AnalysisDeps, input: AnalyzeInput): Promise<ImageSetOutcome[]> {
  const attempt = Context.current().info.attempt;
  const manifest = await deps.readManifest(input);
  const sets = input.indices.map((i) => {
    const s = manifest.sets[i];
    if (!s) throw ApplicationFailure.nonRetryable(`manifest ${input.manifestKey} has no image set at index ${i}`);
    return s;
  });

  let engine: Engine;
  try {
    engine = deps.engineFor({ engine: manifest.engine, ...manifest.engineOptions });
  } catch (err) {
    if (err instanceof EngineUnavailableError) throw ApplicationFailure.nonRetryable(err.message, 'EngineUnavailable');
    throw err;
  }
  const identity = await engine.identity();

  const outcomes: ImageSetOutcome[] = [];
  const toRun: ManifestSet[] = [];
  for (const set of sets) {
    const finished = await matchingProvenance(deps.store, manifest, set, identity);
    if (finished) outcomes.push(skippedOutcome(manifest, set, attempt, finished));
    else toRun.push(set);
  }
  if (toRun.length === 0) return outcomes;

  const run = (batch: ManifestSet[]): Promise<ImageSetOutcome[]> => runBatch(deps, { manifest, sets: batch, engine, identity, attempt });
  try {
    outcomes.push(...(await run(toRun)));
  } catch (err) {
    if (err instanceof ImageSetInputError && toRun.length > 1) {
      // One bad set must not fail its batch neighbours: rerun them one by one to find it.
      for (const set of toRun) {
        try {
          outcomes.push(...(await run([set])));
        } catch (single) {
          if (single instanceof ImageSetInputError) outcomes.push(failedOutcome(manifest, set, attempt, single));
          else throw single;
        }
      }
    } else if (err instanceof ImageSetInputError) {
      // Input errors are final for the set: non-retryable, so Temporal does not retry a file that will
      // never decode; the workflow records the reason on the image set and carries on with the others.
      throw ApplicationFailure.nonRetryable(err.message, 'ImageSetInputError', { setKey: toRun[0]?.key, attempt });
    } else if (!isInfrastructureError(err) && attempt >= manifest.dispatch.maxEngineAttempts) {
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

interface FinishedSet {
  provenance: SetProvenance;
  marker: { uri: string; size: number; checksum: string };
}

function skippedOutcome(manifest: ChunkManifest, set: ManifestSet, attempt: number, finished: FinishedSet): ImageSetOutcome {
  return {
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
    summary: finished.provenance.summary,
  };
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

/** The set's provenance.json, if it proves this exact work was already done. */
async function matchingProvenance(
  store: ObjectStore,
  manifest: ChunkManifest,
  set: ManifestSet,
  identity: EngineIdentity,
): Promise<FinishedSet | undefined> {
  const markerKey = `${layout.setPrefix(manifest.experimentId, set.key)}provenance.json`;
  const raw = await store.getBytesIfExists(manifest.bucket, markerKey);
  if (!raw) return undefined;
  const parsed = provenanceSchema.safeParse(JSON.parse(raw.toString('utf8')));
  if (!parsed.success) return undefined;
  const p = parsed.data;
  if (p.engine.name !== identity.name || p.engine.version !== identity.version) return undefined;
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
