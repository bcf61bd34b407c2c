import { CancellationScope, sleep } from '@temporalio/workflow';
import { DEFAULTS, type ImageSetOutcome } from '../core/model';
import { control } from './activities-proxy';

/**
 * Mirrors image set outcomes to MariaDB in batches from workflow code: never awaited by the analysis
 * path, flushed in order, one sync activity at a time, and flushed within SYNC_EVERY_MS of the first
 * unsynced outcome. The flush timer runs only while outcomes wait, so an idle chunk adds no events.
 */
export class OutcomeMirror {
  private pending: ImageSetOutcome[] = [];
  private chain: Promise<void> = Promise.resolve();
  private timerArmed = false;

  constructor(private readonly experimentId: number) {}

  add(outcome: ImageSetOutcome): void {
    this.pending.push(outcome);
    if (this.pending.length >= DEFAULTS.SYNC_BATCH) this.flush();
    else this.armTimer();
  }

  /** Queued for the next flush without arming the timer (the chunk is being cancelled; drain follows). */
  addQuietly(outcome: ImageSetOutcome): void {
    this.pending.push(outcome);
  }

  /** Flush what waits and wait until every sync so far has completed. */
  async drain(): Promise<void> {
    this.flush();
    await this.chain;
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    const outcomes = this.pending;
    this.pending = [];
    const experimentId = this.experimentId;
    this.chain = this.chain.then(() => CancellationScope.nonCancellable(() => control.syncImageSets({ experimentId, outcomes })));
  }

  private armTimer(): void {
    if (this.timerArmed) return;
    this.timerArmed = true;
    void CancellationScope.nonCancellable(() => sleep(DEFAULTS.SYNC_EVERY_MS)).then(() => {
      this.timerArmed = false;
      this.flush();
    });
  }
}
