import { ParentClosePolicy, isCancellation, startChild, workflowInfo } from '@temporalio/workflow';
import { TASK_QUEUES, type ChunkRef, type ExperimentPlan } from '../core/model';
import { control } from './activities-proxy';
import { ImageSetChunkWorkflow } from './chunk';
import type { ExperimentRun } from './experiment-run';

/**
 * The chunk children of one experiment run: pages pending image sets into chunk manifests (through
 * the manifest activity), starts a child per chunk up to the concurrency limit, and absorbs each
 * child's result into the run. Workflow-side only.
 */
export class ChunkChildren {
  private readonly children = new Map<string, number>();
  /** Set whenever a child ends; the experiment loop resets it before it waits. */
  changed = false;
  /** The manifest activity found no pending image set after the cursor. */
  exhausted = false;

  constructor(
    private readonly run: ExperimentRun,
    private readonly plan: ExperimentPlan,
  ) {}

  get size(): number {
    return this.children.size;
  }

  get hasRoom(): boolean {
    return this.children.size < this.plan.dispatch.concurrentChunks;
  }

  /** Start children until the limit is reached, the sets run out, or `mayGrowHistory` says stop. */
  async startMore(mayGrowHistory: () => boolean): Promise<void> {
    const { dispatch } = this.plan;
    while (this.hasRoom && !this.exhausted && mayGrowHistory()) {
      const prepared = await control.prepareManifestChunks({
        experimentId: this.plan.experimentId,
        afterSetId: this.run.carried.afterSetId,
        chunkSize: dispatch.chunkSize,
        maxChunks: dispatch.concurrentChunks - this.children.size,
      });
      if (prepared.sealed) this.run.carried.sealed = true;
      if (prepared.chunks.length === 0) {
        this.exhausted = true;
        return;
      }
      for (const chunk of prepared.chunks) this.start(chunk, prepared.chunks.length);
      this.run.show();
    }
  }

  private start(chunk: ChunkRef, preparedTogether: number): void {
    const { dispatch } = this.plan;
    // The window is shared among the chunks running at once; a chunk that runs alone (a small
    // experiment, or the last chunk once the others are done) gets all of it.
    const alone = this.children.size === 0 && preparedTogether === 1 && chunk.count < dispatch.chunkSize;
    const window = alone ? dispatch.window : Math.max(1, Math.ceil(dispatch.window / dispatch.concurrentChunks));
    const carried = this.run.carried;
    carried.afterSetId = chunk.lastSetId;
    carried.total += chunk.count;
    carried.chunksStarted++;
    this.run.running += chunk.count;
    const childId = `${workflowInfo().workflowId}-chunk-${chunk.firstSetId}`;
    this.children.set(childId, chunk.count);
    void startChild(ImageSetChunkWorkflow, {
      workflowId: childId,
      taskQueue: TASK_QUEUES.workflow,
      args: [{ experimentId: this.plan.experimentId, bucket: this.plan.bucket, manifestKey: chunk.manifestKey, window, dispatch }],
      parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
      staticSummary: `${chunk.count} image sets: ${chunk.firstKey} … ${chunk.lastKey}`,
    })
      .then((handle) => handle.result())
      .then(
        (result) => this.run.absorb(result, chunk.count),
        (err: unknown) => {
          // A chunk that itself failed (not its image sets, which it records) is counted failed here;
          // its sets stay pending in MariaDB, so `cpflow retry` picks them up.
          if (!isCancellation(err)) {
            const error = err instanceof Error ? err.message : String(err);
            this.run.absorb({ done: 0, failed: chunk.count, skipped: 0, failures: [{ key: childId, error, attempts: 1 }] }, chunk.count);
          }
        },
      )
      .finally(() => {
        this.children.delete(childId);
        this.changed = true;
      });
  }
}
