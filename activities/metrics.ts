import { ApplicationFailure, Context } from '@temporalio/activity';
import type { MetricMeter } from '@temporalio/common';
import type { AnalyzeInput, ImageSetOutcome } from '../core/model';
import type { ObjectStore } from '../core/s3';
import type { AnalysisDeps } from './analyze';
import type { Engine } from './engines';

/**
 * cpflow's own metrics, recorded through the activity's Temporal metric meter so they are served on the
 * same Prometheus endpoint as the SDK's (CPFLOW_METRICS_PORT), with the SDK's tags (namespace,
 * task_queue, activity_type) added:
 *
 *   cpflow_image_sets_total{engine, outcome="done|failed|skipped"}   image sets finished by this worker
 *   cpflow_engine_seconds{engine, outcome="ok|error"}               one engine invocation (histogram)
 *   cpflow_bytes_total{direction="download|upload"}                 bytes moved between S3 and the worker
 *
 * The queue backlog gauge is the workers' (workers/backlog.ts). Outside an activity (unit tests with
 * fakes) nothing is recorded.
 */

function meter(): MetricMeter | undefined {
  try {
    return Context.current().metricMeter;
  } catch {
    return undefined;
  }
}

export function countImageSets(engine: string, outcome: 'done' | 'failed' | 'skipped', count: number): void {
  if (count > 0) meter()?.createCounter('cpflow_image_sets_total', 'sets', 'Image sets finished, by engine and outcome').add(count, { engine, outcome });
}

function engineSeconds(engine: string, outcome: 'ok' | 'error', seconds: number): void {
  meter()?.createHistogram('cpflow_engine_seconds', 'float', 's', 'Duration of one engine invocation (a batch of image sets)').record(seconds, { engine, outcome });
}

function bytesMoved(direction: 'download' | 'upload', bytes: number): void {
  if (bytes > 0) meter()?.createCounter('cpflow_bytes_total', 'bytes', 'Bytes moved between S3 and this worker').add(bytes, { direction });
}

function timedEngine(engine: Engine, name: string): Engine {
  return {
    identity: () => engine.identity(),
    run: async (request) => {
      const started = performance.now();
      try {
        const result = await engine.run(request);
        engineSeconds(name, 'ok', (performance.now() - started) / 1000);
        return result;
      } catch (err) {
        engineSeconds(name, 'error', (performance.now() - started) / 1000);
        throw err;
      }
    },
  };
}

function countingStore(store: ObjectStore): ObjectStore {
  return {
    getBytes: async (bucket, key) => {
      const bytes = await store.getBytes(bucket, key);
      bytesMoved('download', bytes.length);
      return bytes;
    },
    getBytesIfExists: async (bucket, key) => {
      const bytes = await store.getBytesIfExists(bucket, key);
      bytesMoved('download', bytes?.length ?? 0);
      return bytes;
    },
    downloadIfExists: async (bucket, key, localPath) => {
      const got = await store.downloadIfExists(bucket, key, localPath);
      bytesMoved('download', got?.size ?? 0);
      return got;
    },
    downloadToFile: (bucket, key, localPath) => store.downloadToFile(bucket, key, localPath),
    putFile: async (bucket, key, localPath, opts) => {
      const stored = await store.putFile(bucket, key, localPath, opts);
      bytesMoved('upload', stored.size);
      return stored;
    },
    putBytes: async (bucket, key, body, contentType) => {
      const stored = await store.putBytes(bucket, key, body, contentType);
      bytesMoved('upload', stored.size);
      return stored;
    },
  };
}

/** The analysis dependencies with their engine timed and their object store counted. */
export function instrumentedDeps(deps: AnalysisDeps): AnalysisDeps {
  return {
    ...deps,
    store: countingStore(deps.store),
    engineFor: (selection) => timedEngine(deps.engineFor(selection), selection.engine),
  };
}

/** Count the outcomes of one analysis activity (and its sets when it fails them for good). */
export async function countedAnalysis(
  deps: AnalysisDeps,
  input: AnalyzeInput,
  analyze: () => Promise<ImageSetOutcome[]>,
): Promise<ImageSetOutcome[]> {
  const { engine } = await deps.readManifest(input);
  try {
    const outcomes = await analyze();
    countImageSets(engine, 'skipped', outcomes.filter((o) => o.status === 'done' && o.skipped).length);
    countImageSets(engine, 'done', outcomes.filter((o) => o.status === 'done' && !o.skipped).length);
    countImageSets(engine, 'failed', outcomes.filter((o) => o.status === 'failed').length);
    return outcomes;
  } catch (err) {
    if (err instanceof ApplicationFailure && err.nonRetryable) countImageSets(engine, 'failed', input.indices.length);
    throw err;
  }
}
