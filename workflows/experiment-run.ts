import { setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import {
  adaptiveBatching,
  DEFAULTS,
  engineTime,
  SEARCH_ATTRIBUTE_KEYS,
  type BatchingState,
  type ChunkResult,
  type ExperimentPhase,
  type ExperimentPlan,
  type ExperimentProgress,
  type ExperimentStatus,
  type PartitionCursor,
  type StageProgress,
} from '../core/model';

/** What one run of an ExperimentWorkflow hands to the next across continue-as-new. */
export interface CarriedState {
  /**
   * The partitions being paged (one per stage without an upstream stage, one per released upstream
   * group otherwise), each with its cursor. Empty in a fresh run until the plan is read.
   */
  partitions: PartitionCursor[];
  /** Partitions of dependent stages whose upstream group has not finished yet (`stage\npartition`). */
  waiting: string[];
  /** Partitions already released or failed, so a repeated group report changes nothing. */
  released: string[];
  /** Set once the partitions have been initialised from the plan (false only in a fresh run). */
  initialised: boolean;
  done: number;
  failed: number;
  skipped: number;
  total: number;
  /** Per stage (by name), for experiments with stages. */
  stageCounts: Record<string, Omit<StageProgress, 'name'>>;
  sealed: boolean;
  runs: number;
  chunksStarted: number;
  recentFailures: ExperimentProgress['recentFailures'];
  /** Adaptive batching: what the chunks measured and chose last, handed to the next chunks. */
  batching?: BatchingState;
}

export const freshCarriedState = (): CarriedState => ({
  partitions: [],
  waiting: [],
  released: [],
  initialised: false,
  done: 0,
  failed: 0,
  skipped: 0,
  total: 0,
  stageCounts: {},
  sealed: true,
  runs: 0,
  chunksStarted: 0,
  recentFailures: [],
});

/**
 * The carried state of a run started by an earlier cpflow (before stages): it had one paging cursor,
 * `afterSetId`, and no partitions. Such a run continues as the one partition of a plain experiment.
 */
export function normalizeCarried(carried: Partial<CarriedState> & { afterSetId?: number }): CarriedState {
  const fresh = freshCarriedState();
  const { afterSetId, ...rest } = carried;
  const state: CarriedState = { ...fresh, ...rest };
  if (!carried.partitions) {
    state.partitions = [{ stage: '', partition: '', afterSetId: afterSetId ?? 0, afterGroup: '', exhausted: false }];
    state.initialised = true;
  }
  return state;
}

/** A plan from a worker that predates stages has neither: it is a plain, one-stage experiment. */
export function withStageDefaults(plan: ExperimentPlan): ExperimentPlan {
  const legacy = plan as Partial<Pick<ExperimentPlan, 'stages' | 'partitions'>> & ExperimentPlan;
  return {
    ...plan,
    stages: legacy.stages ?? [{ name: '', grouped: false, dependents: [] }],
    partitions: legacy.partitions ?? [],
  };
}

export const partitionId = (stage: string, partition: string): string => `${stage}\n${partition}`;

/**
 * The state of one run of an experiment and how it shows: the `progress` query, the Web UI's
 * current details and the search attributes. Workflow-side only (no I/O).
 */
export class ExperimentRun {
  phase: ExperimentPhase = 'starting';
  /** Image sets handed to chunk children that have not reported back yet. */
  running = 0;
  /** Set once the plan activity has answered; until then progress comes from the carried state alone. */
  plan: ExperimentPlan | undefined;

  constructor(
    readonly experimentId: number,
    readonly carried: CarriedState,
    private readonly withSearchAttributes: boolean,
  ) {}

  /** More than one stage: progress, the Web UI and `status` break the counts down by stage. */
  get staged(): boolean {
    return (this.plan?.stages.length ?? 0) > 1;
  }

  progress(): ExperimentProgress {
    const c = this.carried;
    const stages = this.staged
      ? (this.plan?.stages ?? []).map((s) => ({ name: s.name, ...(c.stageCounts[s.name] ?? { total: 0, done: 0, failed: 0, skipped: 0 }) }))
      : undefined;
    return {
      experimentId: this.experimentId,
      phase: this.phase,
      total: Math.max(c.total, this.plan?.totalSets ?? 0),
      done: c.done,
      failed: c.failed,
      skipped: c.skipped,
      running: this.running,
      sealed: c.sealed,
      runsSoFar: c.runs,
      recentFailures: c.recentFailures,
      ...(stages ? { stages } : {}),
      ...(this.plan ? { batching: this.batching(this.plan) } : {}),
    };
  }

  /** Image sets per analysis activity: the stored --batch-size, or what the chunks chose from their measurements. */
  private batching(plan: ExperimentPlan): NonNullable<ExperimentProgress['batching']> {
    if (!adaptiveBatching(plan.dispatch)) return { adaptive: false, batchSize: plan.dispatch.batchSize };
    return { adaptive: true, batchSize: this.carried.batching?.batchSize ?? 1, ...(this.carried.batching?.secondsPerSet !== undefined ? { secondsPerSet: this.carried.batching.secondsPerSet } : {}) };
  }

  enter(phase: ExperimentPhase): void {
    this.phase = phase;
    this.show();
  }

  private stageCounts(stage: string): Omit<StageProgress, 'name'> {
    const counts = (this.carried.stageCounts[stage] ??= { total: 0, done: 0, failed: 0, skipped: 0 });
    return counts;
  }

  /** Image sets handed to a chunk child. */
  started(stage: string, count: number): void {
    this.carried.total += count;
    this.stageCounts(stage).total += count;
    this.running += count;
  }

  /** A chunk child finished (count: the sets it was handed), or sets were failed without running (count 0). */
  absorb(r: ChunkResult, count: number): void {
    const c = this.carried;
    c.done += r.done;
    c.failed += r.failed;
    c.skipped += r.skipped;
    if (r.stage !== undefined) {
      const s = this.stageCounts(r.stage);
      s.done += r.done;
      s.failed += r.failed;
      s.skipped += r.skipped;
      if (count === 0) s.total += r.failed;
    }
    if (count === 0) c.total += r.failed;
    this.running -= count;
    if (r.batching) c.batching = { ...r.batching };
    c.recentFailures = [...r.failures, ...c.recentFailures].slice(0, DEFAULTS.RECENT_FAILURES_SHOWN);
    this.show();
  }

  /** The Web UI's "current details" of the run. */
  show(): void {
    const p = this.progress();
    const title = this.plan ? `**${this.plan.project} / ${this.plan.name}**` : `**experiment ${this.experimentId}**`;
    const stages = p.stages
      ? `\n\n${p.stages.map((s) => `- stage **${s.name}**: ${s.done} done, ${s.failed} failed of ${s.total} started`).join('\n')}`
      : '';
    const failures = p.recentFailures.length
      ? `\n\nRecent failures:\n${p.recentFailures.map((f) => `- ${f.stage ? `${f.stage}/` : ''}${f.key} (${f.attempts} attempts): ${f.error}`).join('\n')}`
      : '';
    const b = p.batching;
    const batching = b
      ? `\n\nImage sets per analysis activity: **${b.batchSize}** (${b.adaptive ? `adaptive${b.secondsPerSet !== undefined ? `: ${engineTime(b.secondsPerSet)} of engine time per set` : ''}` : '--batch-size'})`
      : '';
    setCurrentDetails(`${title} — ${p.phase}: ${p.done} done, ${p.failed} failed, ${p.running} running of ${p.total}${batching}${stages}${failures}`);
  }

  /** Search attributes for the Web UI's list and filters. */
  markStatus(status: ExperimentStatus): void {
    if (!this.withSearchAttributes) return;
    upsertSearchAttributes([
      { key: SEARCH_ATTRIBUTE_KEYS.experimentId, value: String(this.experimentId) },
      { key: SEARCH_ATTRIBUTE_KEYS.project, value: this.plan?.project ?? '' },
      { key: SEARCH_ATTRIBUTE_KEYS.status, value: status },
      { key: SEARCH_ATTRIBUTE_KEYS.imageSetCount, value: this.progress().total },
    ]);
  }
}
