import { ApplicationFailure, Context } from '@temporalio/activity';
import { DEFAULTS, dispatchOptionsSchema, type CpflowActivities, type DispatchOptions, type ImageSetOutcome, type ReduceInput } from '../../core/model';

/** An in-memory stand-in for MariaDB + S3 that the fake activities share. */
export class FakeLab {
  sets: Array<{ id: number; key: string; status: 'pending' | 'done' | 'failed' | 'cancelled' }> = [];
  sealed = true;
  manifests = new Map<string, number[]>();
  analyzed = new Map<number, number>();
  inFlight = 0;
  maxInFlight = 0;
  statuses: string[] = [];
  reduced = 0;
  cancelledActivities = 0;
  /** `ok` / `fail`: the experiment has a platemap and its profiles step succeeds / fails on bad input. */
  profiles: 'none' | 'ok' | 'fail' = 'none';
  /** Order of the profiles and reduce calls, and what reduce was told. */
  calls: string[] = [];
  reduceInputs: ReduceInput[] = [];
  errors: Array<string | null | undefined> = [];
  constructor(
    n: number,
    readonly bad: Set<number> = new Set(),
    readonly delayMs = 0,
    readonly dispatch: Partial<DispatchOptions> = {},
  ) {
    this.addSets(n);
  }
  addSets(n: number): void {
    const start = this.sets.length;
    for (let i = 1; i <= n; i++) this.sets.push({ id: start + i, key: `S${start + i}`, status: 'pending' });
  }
  activities(): CpflowActivities {
    const lab = this;
    const impl: CpflowActivities = {
      async loadExperimentPlan(experimentId) {
        return { experimentId, name: 'fake', project: 'fake', bucket: 'b', engine: 'builtin', status: 'running', sealed: lab.sealed, totalSets: lab.sets.length, maxFailedFraction: DEFAULTS.MAX_FAILED_FRACTION, dispatch: dispatchOptionsSchema.parse(lab.dispatch), ...(lab.profiles !== 'none' ? { profiles: true } : {}) };
      },
      async prepareManifestChunks({ afterSetId, chunkSize, maxChunks }) {
        const chunks = [];
        let after = afterSetId;
        for (let c = 0; c < maxChunks; c++) {
          const page = lab.sets.filter((s) => s.id > after && s.status === 'pending').slice(0, chunkSize);
          if (page.length === 0) break;
          const key = `chunk-${page[0]!.id}`;
          lab.manifests.set(key, page.map((s) => s.id));
          chunks.push({ manifestKey: key, count: page.length, firstSetId: page[0]!.id, lastSetId: page[page.length - 1]!.id, firstKey: page[0]!.key, lastKey: page[page.length - 1]!.key });
          after = page[page.length - 1]!.id;
        }
        return { chunks, sealed: lab.sealed, status: 'running' as const };
      },
      async loadChunkIndex({ manifestKey }) {
        return (lab.manifests.get(manifestKey) ?? []).map((id) => ({ id, key: `S${id}` }));
      },
      async analyzeImageSets({ manifestKey, indices }) {
        const ids = indices.map((i) => lab.manifests.get(manifestKey)![i]!);
        lab.inFlight++;
        lab.maxInFlight = Math.max(lab.maxInFlight, lab.inFlight);
        try {
          if (lab.delayMs > 0) {
            const ctx = Context.current();
            // Cancellation reaches an activity through its heartbeats, as it does for the real engine.
            const beat = setInterval(() => ctx.heartbeat(), 200);
            await Promise.race([ctx.sleep(lab.delayMs), ctx.cancelled]).finally(() => clearInterval(beat)).catch((err) => {
              lab.cancelledActivities++;
              throw err;
            });
          }
          for (const id of ids) lab.analyzed.set(id, (lab.analyzed.get(id) ?? 0) + 1);
          if (ids.some((id) => lab.bad.has(id))) {
            throw ApplicationFailure.nonRetryable(`image set S${ids[0]}: undecodable image`, 'ImageSetInputError');
          }
          return ids.map((id): ImageSetOutcome => ({ imageSetId: id, status: 'done', attempts: 1 }));
        } finally {
          lab.inFlight--;
        }
      },
      async syncImageSets({ outcomes }) {
        for (const o of outcomes) {
          const s = lab.sets.find((x) => x.id === o.imageSetId);
          if (s && o.status !== 'running') s.status = o.status;
        }
      },
      async syncExperimentStatus({ status, error }) {
        lab.statuses.push(status);
        lab.errors.push(error);
      },
      async computeProfiles() {
        lab.calls.push('computeProfiles');
        if (lab.profiles === 'fail') throw ApplicationFailure.nonRetryable('wells B07 have results but are not in the platemap', 'ProfilesInputError');
        return { singleCellsUri: 's3://b/single_cells.parquet', profileUris: ['s3://b/profiles/well_profiles.parquet'], reportDataUri: 's3://b/r.json', provenanceUri: 's3://b/pp.json', cells: 10, wells: 2, features: { aggregated: 5, selected: 3 } };
      },
      async reduceExperiment(input) {
        lab.calls.push('reduceExperiment');
        lab.reduceInputs.push(input);
        lab.reduced++;
        const failed = lab.sets.filter((s) => s.status !== 'done').length;
        return { summaryUri: 's3://b/summary.csv', reportUri: 's3://b/report.html', provenanceUri: 's3://b/p.json', total: lab.sets.length, done: lab.sets.length - failed, failed, objects: 0 };
      },
    };
    return impl;
  }
}

