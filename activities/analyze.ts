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
import { countedAnalysis, instrumentedDeps } from './metrics';
import { groupProvenanceSchema, provenanceSchema, type GroupProvenance, type SetProvenance } from './provenance';
import { sameEnvironment } from './engines/cellprofiler/environment';

/**
 * analyzeImageSets: the unit of work, one batch of image sets or one whole group. Skips the sets
 * whose provenance.json proves the work was done (a group: only when its own provenance.json matches
 * every input, the pipeline and the engine; otherwise the whole group runs again); runs the rest in
 * one engine invocation (analyze-batch.ts); when an input error hits a batch (or its outputs cannot
 * be told apart), reruns its sets one by one so one bad set fails alone; caps engine failures at the
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
  // Engine time, bytes moved and set outcomes for Prometheus (metrics.ts).
  const measured = instrumentedDeps(deps);
  return {
    analyzeImageSets: (input) =>
      countedAnalysis(measured, input, async () => {
        const outcomes = await analyzeImageSets(measured, input);
        // The batch each outcome came from: `cpflow status` shows the sizes adaptive batching chose.
        return outcomes.map((o) => ({ ...o, batchSize: input.indices.length }));
      }),
  };
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
    // Analysis is routed by engine, so this is a misconfigured worker: another worker must take the
    // set (retried with backoff, never failed).
    if (err instanceof EngineUnavailableError) throw ApplicationFailure.retryable(err.message, 'EngineUnavailable');
    throw err;
  }
  const identity = await engine.identity();
  if (manifest.groupBy.length > 0) return analyzeGroup(deps, manifest, sets, engine, identity, attempt);

  const outcomes: ImageSetOutcome[] = [];
  const toRun: ManifestSet[] = [];
  for (const set of sets) {
    const finished = await matchingProvenance(deps.store, manifest, set, identity);
    if (finished) outcomes.push(skippedOutcome(manifest, set, attempt, finished));
    else toRun.push(set);
  }
  if (toRun.length === 0) return outcomes;

  const run = (batch: ManifestSet[]): Promise<ImageSetOutcome[]> => runBatch(deps, { manifest, sets: batch, engine, identity, attempt });
  const lastAttempt = attempt >= manifest.dispatch.maxEngineAttempts;
  /** Whether a failure is final for its set(s): an input error, or an engine failure on the last attempt. */
  const final = (err: unknown): boolean => err instanceof ImageSetInputError || lastAttempt;
  const asError = (err: unknown): Error => (err instanceof Error ? err : new Error(String(err)));
  try {
    outcomes.push(...(await run(toRun)));
  } catch (err) {
    // Outages retry without an attempt limit (S3 or the database away fails nothing); a cancelled
    // activity stops.
    if (isInfrastructureError(err) || Context.current().cancellationSignal.aborted) throw err;
    if (toRun.length > 1) {
      // One bad set must not fail its batch neighbours: rerun them one by one to find it. Outputs no
      // single set's row names are attributed the same way: alone, every file is the set's own. An
      // engine failure (a crash, a time-out) is narrowed down the same way, so only the sets that
      // fail alone are retried (the next attempt skips the ones done now by their provenance) or,
      // on the last attempt, failed.
      let retry: unknown;
      for (const set of toRun) {
        try {
          outcomes.push(...(await run([set])));
        } catch (single) {
          if (isInfrastructureError(single) || Context.current().cancellationSignal.aborted) throw single;
          if (final(single)) outcomes.push(failedOutcome(manifest, set, attempt, asError(single)));
          else retry ??= single;
        }
      }
      if (retry !== undefined) throw retry;
    } else if (!final(err)) {
      // The engine failed (crash, time-out, an error it did not classify): Temporal retries.
      throw err;
    } else if (outcomes.length > 0) {
      // The others of this activity were done before (skipped): only this set fails.
      outcomes.push(failedOutcome(manifest, toRun[0] as ManifestSet, attempt, asError(err)));
    } else if (err instanceof ImageSetInputError) {
      // Input errors are final for the set: non-retryable, so Temporal does not retry a file that will
      // never decode; the workflow records the reason on the image set and carries on with the others.
      throw ApplicationFailure.nonRetryable(err.message, 'ImageSetInputError', { setKey: toRun[0]?.key, attempt });
    } else {
      // The engine kept failing on this set through maxEngineAttempts attempts: give up on it.
      // Infrastructure errors never get here: they are not counted against the cap.
      throw ApplicationFailure.nonRetryable(asError(err).message, 'EngineFailure', { setKey: toRun.map((s) => s.key).join(', '), attempt });
    }
  }
  return outcomes;
}

/**
 * One whole group in one engine invocation. The group is skipped only when its provenance.json
 * (written after every set's) matches; any failure fails the whole group: its sets are analysed
 * together, so no set's result stands without the others.
 */
async function analyzeGroup(
  deps: AnalysisDeps,
  manifest: ChunkManifest,
  sets: ManifestSet[],
  engine: Engine,
  identity: EngineIdentity,
  attempt: number,
): Promise<ImageSetOutcome[]> {
  const key = sets[0]?.group ?? '';
  if (key === '' || sets.some((s) => s.group !== key)) {
    throw ApplicationFailure.nonRetryable(`experiment ${manifest.experimentId} stage ${manifest.stage}: an analysis of a grouped stage must get exactly one group`);
  }
  const metadata = Object.fromEntries(manifest.groupBy.map((k) => [k, sets[0]?.metadata[k] ?? '']));
  const finished = await matchingGroupProvenance(deps.store, manifest, key, sets, identity);
  if (finished) return skippedGroup(manifest, sets, attempt, finished);
  try {
    return await runBatch(deps, { manifest, sets, engine, identity, attempt, group: { key, metadata } });
  } catch (err) {
    if (err instanceof ImageSetInputError) {
      throw ApplicationFailure.nonRetryable(`group ${key} (${sets.length} image sets): ${err.message}`, 'ImageSetInputError', { setKey: key, attempt });
    }
    if (!isInfrastructureError(err) && attempt >= manifest.dispatch.maxEngineAttempts) {
      const message = err instanceof Error ? err.message : String(err);
      throw ApplicationFailure.nonRetryable(`group ${key}: ${message}`, 'EngineFailure', { setKey: key, attempt });
    }
    throw err;
  }
}

function skippedGroup(manifest: ChunkManifest, sets: ManifestSet[], attempt: number, finished: FinishedGroup): ImageSetOutcome[] {
  return sets.map((set, i) => {
    const record = finished.provenance.sets.find((s) => s.id === set.id);
    return {
      imageSetId: set.id,
      status: 'done',
      attempts: attempt,
      skipped: true,
      outputPrefix: layout.setPrefix(manifest.experimentId, set.key, manifest.stage),
      results: [
        ...(record?.outputs ?? []).map((o) => ({ kind: kindOf(o.name), uri: o.uri, size: o.size, checksum: o.checksum })),
        ...(record ? [{ kind: 'provenance', ...record.provenance }] : []),
      ],
      ...(record?.warnings?.length ? { warnings: record.warnings } : {}),
      ...(i === 0
        ? {
            groupResults: [
              ...finished.provenance.outputs.map((o) => ({ kind: `group-${kindOf(o.name)}`, uri: o.uri, size: o.size, checksum: o.checksum })),
              { kind: 'group-provenance', ...finished.marker },
            ],
          }
        : {}),
    };
  });
}

interface FinishedGroup {
  provenance: GroupProvenance;
  marker: { uri: string; size: number; checksum: string };
}

/** The group's provenance.json, if it proves this exact group was already analysed. */
async function matchingGroupProvenance(
  store: ObjectStore,
  manifest: ChunkManifest,
  key: string,
  sets: ManifestSet[],
  identity: EngineIdentity,
): Promise<FinishedGroup | undefined> {
  const markerKey = `${layout.groupPrefix(manifest.experimentId, key, manifest.stage)}provenance.json`;
  const raw = await store.getBytesIfExists(manifest.bucket, markerKey);
  if (!raw) return undefined;
  const parsed = groupProvenanceSchema.safeParse(JSON.parse(raw.toString('utf8')));
  if (!parsed.success) return undefined;
  const p = parsed.data;
  if (!sameEngine(p.engine, identity) || p.pipelineSha256 !== manifest.pipelineSha256) return undefined;
  if (p.sets.length !== sets.length) return undefined;
  for (const set of sets) {
    const recorded = p.sets.find((s) => s.id === set.id && s.key === set.key);
    if (!recorded || !sameInputs(recorded.inputs, set)) return undefined;
  }
  return {
    provenance: p,
    marker: { uri: s3Uri(manifest.bucket, markerKey), size: raw.length, checksum: `sha256:${crypto.createHash('sha256').update(raw).digest('hex')}` },
  };
}

/** Same engine, same version, the same environment (packages, Python) and the same plugin files (by content). */
function sameEngine(recorded: SetProvenance['engine'], identity: EngineIdentity): boolean {
  if (recorded.name !== identity.name || recorded.version !== identity.version) return false;
  // Same build in another environment (packages, Python) is not the same work.
  if (!sameEnvironment(recorded.environment, identity.environment)) return false;
  const a = JSON.stringify(recorded.plugins ?? []);
  const b = JSON.stringify(identity.plugins ?? []);
  return a === b;
}

function sameInputs(recorded: SetProvenance['inputs'], set: ManifestSet): boolean {
  if (recorded.length !== set.files.length) return false;
  return set.files.every((f) => {
    const r = recorded.find((i) => i.channel === f.channel);
    if (r === undefined || r.checksum !== f.checksum || r.uri !== f.uri) return false;
    // A run that analysed other bytes than were registered (before cpflow checked) proves nothing.
    return !f.checksum.startsWith('sha256:') || f.checksum === `sha256:${r.sha256}`;
  });
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
    outputPrefix: layout.setPrefix(manifest.experimentId, set.key, manifest.stage),
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
    outputPrefix: layout.setPrefix(manifest.experimentId, set.key, manifest.stage),
    error: err.message,
  };
}

/** The set's provenance.json, if it proves this exact work was already done. */
export async function matchingProvenance(
  store: ObjectStore,
  manifest: ChunkManifest,
  set: ManifestSet,
  identity: EngineIdentity,
): Promise<FinishedSet | undefined> {
  const markerKey = `${layout.setPrefix(manifest.experimentId, set.key, manifest.stage)}provenance.json`;
  const raw = await store.getBytesIfExists(manifest.bucket, markerKey);
  if (!raw) return undefined;
  const parsed = provenanceSchema.safeParse(JSON.parse(raw.toString('utf8')));
  if (!parsed.success) return undefined;
  const p = parsed.data;
  if (!sameEngine(p.engine, identity)) return undefined;
  if (p.pipelineSha256 !== manifest.pipelineSha256) return undefined;
  // A set analysed as part of a group is judged by its group's record, never on its own.
  if (p.group) return undefined;
  if (!sameInputs(p.inputs, set)) return undefined;
  const marker = {
    uri: s3Uri(manifest.bucket, markerKey),
    size: raw.length,
    checksum: `sha256:${crypto.createHash('sha256').update(raw).digest('hex')}`,
  };
  return { provenance: p, marker };
}
