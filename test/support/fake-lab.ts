import { ApplicationFailure, Context } from '@temporalio/activity';
import {
  DEFAULTS,
  dispatchOptionsSchema,
  type ChunkRef,
  type CpflowActivities,
  type DispatchOptions,
  type ImageSetOutcome,
  type PartitionState,
  type ReduceInput,
  type StagePlan,
} from '../../core/model';

interface FakeSet {
  id: number;
  key: string;
  stage: string;
  group: string;
  partition: string;
  status: 'pending' | 'done' | 'failed' | 'cancelled';
}

/** Stages of a staged fake experiment: an upstream stage grouped by plate, a dependent one per set. */
export interface FakeStages {
  stages: StagePlan[];
  /** Plates, and sites per plate: every stage gets one set per site. */
  plates: string[];
  sites: number;
  /** Milliseconds one analysis of a group of this stage takes (per plate), to order events in tests. */
  delayFor?: (stage: string, group: string) => number;
}

/** An in-memory stand-in for MariaDB + S3 that the fake activities share. */
export class FakeLab {
  sets: FakeSet[] = [];
  sealed = true;
  manifests = new Map<string, number[]>();
  analyzed = new Map<number, number>();
  inFlight = 0;
  maxInFlight = 0;
  /** Image sets (not activities) in analysis at once, and the largest number seen. */
  setsInFlight = 0;
  maxSetsInFlight = 0;
  /** Engine seconds each analysed set reports (adaptive batching measures them); unset: not reported. */
  engineSecondsPerSet: number | undefined;
  /** Every analysis activity's manifest and number of sets, in the order they started. */
  batches: Array<{ manifestKey: string; size: number }> = [];
  statuses: string[] = [];
  reduced = 0;
  cancelledActivities = 0;
  /**
   * How long each cancelled activity takes to stop, by the order in which they see their cancellation
   * (an engine that takes a while to die); unset: at once.
   */
  stopDelaysMs: number[] = [];
  private cancellationsSeen = 0;
  /** `ok` / `fail`: the experiment has a platemap and its profiles step succeeds / fails on bad input. */
  profiles: 'none' | 'ok' | 'fail' = 'none';
  /** Order of the profiles and reduce calls, and what reduce was told. */
  calls: string[] = [];
  reduceInputs: ReduceInput[] = [];
  errors: Array<string | null | undefined> = [];
  /** start/end of every analysis activity, by stage and the group (or first set key) it ran. */
  timeline: Array<{ stage: string; unit: string; start: number; end: number; ok: boolean }> = [];
  constructor(
    n: number,
    readonly bad: Set<number> = new Set(),
    readonly delayMs = 0,
    readonly dispatch: Partial<DispatchOptions> = {},
    readonly staged?: FakeStages,
  ) {
    if (staged) {
      for (const stage of staged.stages) {
        for (const plate of staged.plates) {
          for (let site = 1; site <= staged.sites; site++) {
            const id = this.sets.length + 1;
            this.sets.push({
              id,
              key: `${plate}-s${site}`,
              stage: stage.name,
              group: stage.grouped ? plate : '',
              partition: stage.upstream ? plate : '',
              status: 'pending',
            });
          }
        }
      }
    } else {
      this.addSets(n);
    }
  }
  addSets(n: number): void {
    const start = this.sets.length;
    for (let i = 1; i <= n; i++) this.sets.push({ id: start + i, key: `S${start + i}`, stage: '', group: '', partition: '', status: 'pending' });
  }
  private stages(): StagePlan[] {
    return this.staged?.stages ?? [{ name: '', grouped: false, dependents: [] }];
  }
  activities(): CpflowActivities {
    const lab = this;
    const impl: CpflowActivities = {
      async loadExperimentPlan(experimentId) {
        const stages = lab.stages();
        const partitions: PartitionState[] = [];
        for (const s of stages) {
          if (!s.upstream) continue;
          const pending = new Set(lab.sets.filter((x) => x.stage === s.name && x.status === 'pending').map((x) => x.partition));
          for (const partition of pending) {
            const up = lab.sets.filter((x) => x.stage === s.upstream && x.group === partition);
            const state = up.some((x) => x.status === 'pending') ? 'waiting' : up.every((x) => x.status === 'done') ? 'ready' : 'blocked';
            partitions.push({ stage: s.name, partition, state, ...(state === 'blocked' ? { error: `upstream ${partition} failed` } : {}) });
          }
        }
        return {
          experimentId,
          name: 'fake',
          project: 'fake',
          bucket: 'b',
          engine: 'builtin',
          status: 'running',
          sealed: lab.sealed,
          totalSets: lab.sets.length,
          maxFailedFraction: DEFAULTS.MAX_FAILED_FRACTION,
          dispatch: dispatchOptionsSchema.parse(lab.dispatch),
          stages,
          partitions,
          ...(lab.profiles !== 'none' ? { profiles: true } : {}),
        };
      },
      async prepareManifestChunks({ stage, partition, afterSetId, afterGroup, chunkSize, maxChunks }) {
        const spec = lab.stages().find((s) => s.name === stage)!;
        const chunks: ChunkRef[] = [];
        let after = afterSetId;
        let afterG = afterGroup;
        for (let c = 0; c < maxChunks; c++) {
          const candidates = lab.sets.filter((s) => s.stage === stage && s.partition === partition && s.status === 'pending');
          let page: FakeSet[];
          if (spec.grouped) {
            const group = [...new Set(candidates.map((s) => s.group))].sort().find((g) => g > afterG);
            page = group === undefined ? [] : lab.sets.filter((s) => s.stage === stage && s.group === group);
          } else {
            page = candidates.filter((s) => s.id > after).slice(0, chunkSize);
          }
          if (page.length === 0) break;
          const key = `chunk-${page[0]!.id}`;
          lab.manifests.set(key, page.map((s) => s.id));
          chunks.push({
            manifestKey: key,
            stage,
            groups: spec.grouped && spec.dependents.length > 0 ? [page[0]!.group] : undefined,
            count: page.length,
            firstSetId: page[0]!.id,
            lastSetId: page[page.length - 1]!.id,
            firstKey: page[0]!.key,
            lastKey: page[page.length - 1]!.key,
          });
          after = page[page.length - 1]!.id;
          afterG = page[0]!.group;
        }
        return { chunks, cursor: { afterSetId: after, afterGroup: afterG }, sealed: lab.sealed, status: 'running' as const };
      },
      async loadChunkIndex({ manifestKey }) {
        return (lab.manifests.get(manifestKey) ?? []).map((id) => {
          const s = lab.sets.find((x) => x.id === id)!;
          return { id, key: s.key, group: s.group };
        });
      },
      async failPartition({ stage, partition, error }) {
        const hit = lab.sets.filter((s) => s.stage === stage && s.partition === partition && s.status === 'pending');
        for (const s of hit) s.status = 'failed';
        return { stage, done: 0, failed: hit.length, skipped: 0, failures: hit.map((s) => ({ key: s.key, stage, error, attempts: 0 })) };
      },
      async analyzeImageSets({ manifestKey, indices }) {
        const ids = indices.map((i) => lab.manifests.get(manifestKey)![i]!);
        const first = lab.sets.find((s) => s.id === ids[0])!;
        const start = Date.now();
        lab.inFlight++;
        lab.maxInFlight = Math.max(lab.maxInFlight, lab.inFlight);
        lab.setsInFlight += ids.length;
        lab.maxSetsInFlight = Math.max(lab.maxSetsInFlight, lab.setsInFlight);
        lab.batches.push({ manifestKey, size: ids.length });
        let ok = false;
        try {
          const delay = lab.staged?.delayFor?.(first.stage, first.group || first.partition) ?? lab.delayMs;
          if (delay > 0) {
            const ctx = Context.current();
            // Cancellation reaches an activity through its heartbeats, as it does for the real engine.
            const beat = setInterval(() => ctx.heartbeat(), 200);
            await Promise.race([ctx.sleep(delay), ctx.cancelled]).finally(() => clearInterval(beat)).catch(async (err) => {
              const stopMs = lab.stopDelaysMs[lab.cancellationsSeen++] ?? 0;
              if (stopMs > 0) await new Promise((r) => setTimeout(r, stopMs));
              lab.cancelledActivities++;
              throw err;
            });
          }
          for (const id of ids) lab.analyzed.set(id, (lab.analyzed.get(id) ?? 0) + 1);
          if (ids.some((id) => lab.bad.has(id))) {
            throw ApplicationFailure.nonRetryable(`image set ${first.key}: undecodable image`, 'ImageSetInputError');
          }
          ok = true;
          const seconds = lab.engineSecondsPerSet;
          return ids.map((id): ImageSetOutcome => ({ imageSetId: id, status: 'done', attempts: 1, ...(seconds !== undefined ? { engineSeconds: seconds } : {}) }));
        } finally {
          lab.inFlight--;
          lab.setsInFlight -= ids.length;
          lab.timeline.push({ stage: first.stage, unit: first.group || first.key, start, end: Date.now(), ok });
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
