import { setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import {
  DEFAULTS,
  SEARCH_ATTRIBUTE_KEYS,
  type ChunkResult,
  type ExperimentPhase,
  type ExperimentPlan,
  type ExperimentProgress,
  type ExperimentStatus,
} from '../core/model';

/** What one run of an ExperimentWorkflow hands to the next across continue-as-new. */
export interface CarriedState {
  /** The paging cursor: image sets with a larger id have not been handed to a chunk yet. */
  afterSetId: number;
  done: number;
  failed: number;
  skipped: number;
  total: number;
  sealed: boolean;
  runs: number;
  chunksStarted: number;
  recentFailures: ExperimentProgress['recentFailures'];
}

export const freshCarriedState = (): CarriedState => ({
  afterSetId: 0,
  done: 0,
  failed: 0,
  skipped: 0,
  total: 0,
  sealed: true,
  runs: 0,
  chunksStarted: 0,
  recentFailures: [],
});

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

  progress(): ExperimentProgress {
    const c = this.carried;
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
    };
  }

  enter(phase: ExperimentPhase): void {
    this.phase = phase;
    this.show();
  }

  /** A chunk child finished: add its counts. */
  absorb(r: ChunkResult, count: number): void {
    const c = this.carried;
    c.done += r.done;
    c.failed += r.failed;
    c.skipped += r.skipped;
    this.running -= count;
    c.recentFailures = [...r.failures, ...c.recentFailures].slice(0, DEFAULTS.RECENT_FAILURES_SHOWN);
    this.show();
  }

  /** The Web UI's "current details" of the run. */
  show(): void {
    const p = this.progress();
    const title = this.plan ? `**${this.plan.project} / ${this.plan.name}**` : `**experiment ${this.experimentId}**`;
    const failures = p.recentFailures.length
      ? `\n\nRecent failures:\n${p.recentFailures.map((f) => `- ${f.key} (${f.attempts} attempts): ${f.error}`).join('\n')}`
      : '';
    setCurrentDetails(`${title} — ${p.phase}: ${p.done} done, ${p.failed} failed, ${p.running} running of ${p.total}${failures}`);
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
