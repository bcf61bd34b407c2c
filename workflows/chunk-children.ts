import { ParentClosePolicy, isCancellation, startChild, workflowInfo } from '@temporalio/workflow';
import { adaptiveBatching, TASK_QUEUES, type ChunkRef, type ExperimentPlan, type GroupFinished, type PartitionCursor } from '../core/model';
import { control } from './activities-proxy';
import { ImageSetChunkWorkflow } from './chunk';
import { partitionId, type ExperimentRun } from './experiment-run';

/**
 * The chunk children of one experiment run: pages pending image sets of each ready partition into
 * chunk manifests (through the manifest activity), starts a child per chunk up to the concurrency
 * limit, and absorbs each child's result into the run.
 *
 * Stages: a stage without an upstream stage is one partition, ready at once. A stage that takes
 * files from an earlier stage's groups has one partition per upstream group; it waits until that
 * group reports (a chunk child signals `groupFinished` as soon as the group ends) and is then paged
 * like any other: a plate's analysis starts when that plate's illumination is done, with no barrier
 * across plates. A failed upstream group fails its partition's sets with the reason. Workflow-side only.
 */
export class ChunkChildren {
  private readonly children = new Map<string, number>();
  /** Groups of running chunks that later stages wait for and that have not reported yet, per child. */
  private readonly unreported = new Map<string, { stage: string; groups: Set<string> }>();
  private reports: GroupFinished[] = [];
  /** Set whenever a child ends or a group reports; the experiment loop resets it before it waits. */
  changed = false;

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

  /** Every ready partition has been paged to its end. */
  get exhausted(): boolean {
    return this.run.carried.partitions.every((p) => p.exhausted);
  }

  /** Partitions still waiting for their upstream group. */
  get waiting(): number {
    return this.run.carried.waiting.length;
  }

  get hasReports(): boolean {
    return this.reports.length > 0;
  }

  /** An open experiment received image sets: look again. */
  reopen(): void {
    for (const p of this.run.carried.partitions) p.exhausted = false;
  }

  /** First run: one partition per stage without an upstream; dependent partitions as the plan found them. */
  async initialise(): Promise<void> {
    const carried = this.run.carried;
    if (carried.initialised) return;
    carried.initialised = true;
    for (const stage of this.plan.stages) {
      if (!stage.upstream) carried.partitions.push(cursor(stage.name, ''));
    }
    for (const p of this.plan.partitions) {
      const id = partitionId(p.stage, p.partition);
      if (p.state === 'ready') {
        carried.partitions.push(cursor(p.stage, p.partition));
        carried.released.push(id);
      } else if (p.state === 'waiting') {
        carried.waiting.push(id);
      } else {
        carried.released.push(id);
        await this.failPartition(p.stage, p.partition, p.error ?? 'its upstream group failed');
      }
    }
  }

  /** A chunk child reported a group (signal handler: no I/O here). */
  report(g: GroupFinished): void {
    this.reports.push(g);
    this.changed = true;
  }

  /** Release (or fail) the partitions of later stages that waited for the reported groups. */
  async handleReports(): Promise<void> {
    while (this.reports.length > 0) {
      const reports = this.reports;
      this.reports = [];
      for (const g of reports) {
        for (const entry of this.unreported.values()) if (entry.stage === g.stage) entry.groups.delete(g.group);
        await this.release(g);
      }
    }
  }

  private async release(g: GroupFinished): Promise<void> {
    const carried = this.run.carried;
    const stage = this.plan.stages.find((s) => s.name === g.stage);
    for (const dependent of stage?.dependents ?? []) {
      const id = partitionId(dependent, g.group);
      if (carried.released.includes(id)) continue;
      carried.released.push(id);
      carried.waiting = carried.waiting.filter((w) => w !== id);
      if (g.ok) carried.partitions.push(cursor(dependent, g.group));
      else await this.failPartition(dependent, g.group, `stage ${g.stage} group ${g.group} failed: ${g.error ?? 'unknown error'}`);
    }
    this.run.show();
  }

  /**
   * Nothing runs and nothing is left to page, yet partitions still wait: their upstream group never
   * ran (it had no image set to run, or its chunk was lost). Fail them rather than wait forever.
   */
  async failStranded(): Promise<void> {
    const carried = this.run.carried;
    const stranded = carried.waiting;
    carried.waiting = [];
    for (const id of stranded) {
      const [stage = '', partition = ''] = id.split('\n');
      carried.released.push(id);
      const upstream = this.plan.stages.find((s) => s.name === stage)?.upstream ?? 'upstream';
      await this.failPartition(stage, partition, `stage ${upstream} group ${partition} did not run`);
    }
  }

  private async failPartition(stage: string, partition: string, error: string): Promise<void> {
    const result = await control.failPartition({ experimentId: this.plan.experimentId, stage, partition, error });
    this.run.absorb(result, 0);
  }

  /** Start children until the limit is reached, the sets run out, or `mayGrowHistory` says stop. */
  async startMore(mayGrowHistory: () => boolean): Promise<void> {
    const { dispatch } = this.plan;
    while (this.hasRoom && mayGrowHistory()) {
      const partition = this.run.carried.partitions.find((p) => !p.exhausted);
      if (!partition) return;
      const prepared = await control.prepareManifestChunks({
        experimentId: this.plan.experimentId,
        stage: partition.stage,
        partition: partition.partition,
        afterSetId: partition.afterSetId,
        afterGroup: partition.afterGroup,
        chunkSize: dispatch.chunkSize,
        maxChunks: dispatch.concurrentChunks - this.children.size,
      });
      if (prepared.sealed) this.run.carried.sealed = true;
      if (prepared.failed) this.run.absorb(prepared.failed, 0);
      if (prepared.chunks.length === 0) {
        partition.exhausted = true;
        continue;
      }
      // A manifest activity that predates stages answers without a cursor: its last chunk is the cursor.
      const last = prepared.chunks[prepared.chunks.length - 1];
      partition.afterSetId = prepared.cursor?.afterSetId ?? last?.lastSetId ?? partition.afterSetId;
      partition.afterGroup = prepared.cursor?.afterGroup ?? partition.afterGroup;
      for (const chunk of prepared.chunks) this.start({ ...chunk, stage: chunk.stage ?? partition.stage }, prepared.chunks.length);
      this.run.show();
    }
  }

  private start(chunk: ChunkRef, preparedTogether: number): void {
    const { dispatch } = this.plan;
    const stage = this.plan.stages.find((s) => s.name === chunk.stage);
    // The window is shared among the chunks running at once; a chunk that runs alone (a small
    // experiment, or the last chunk once the others are done) gets all of it.
    const alone = this.children.size === 0 && preparedTogether === 1 && chunk.count < dispatch.chunkSize;
    const window = alone ? dispatch.window : Math.max(1, Math.ceil(dispatch.window / dispatch.concurrentChunks));
    this.run.started(chunk.stage, chunk.count);
    this.run.carried.chunksStarted++;
    const childId = `${workflowInfo().workflowId}-chunk-${chunk.firstSetId}`;
    this.children.set(childId, chunk.count);
    const notifyParent = (stage?.dependents.length ?? 0) > 0;
    const grouped = stage?.grouped ?? false;
    // Adaptive batching starts each chunk from what the chunks before it measured.
    const secondsPerSet = this.run.carried.batching?.secondsPerSet;
    const adaptive = adaptiveBatching(dispatch) && !grouped ? { adaptive: secondsPerSet === undefined ? {} : { secondsPerSet } } : {};
    if (notifyParent && chunk.groups) this.unreported.set(childId, { stage: chunk.stage, groups: new Set(chunk.groups) });
    void startChild(ImageSetChunkWorkflow, {
      workflowId: childId,
      taskQueue: TASK_QUEUES.workflow,
      args: [
        {
          experimentId: this.plan.experimentId,
          bucket: this.plan.bucket,
          manifestKey: chunk.manifestKey,
          window,
          dispatch,
          engine: this.plan.engine,
          stage: chunk.stage,
          grouped,
          notifyParent,
          ...adaptive,
        },
      ],
      parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
      staticSummary: `${chunk.stage ? `stage ${chunk.stage}: ` : ''}${chunk.count} image sets: ${chunk.firstKey} … ${chunk.lastKey}`,
    })
      .then((handle) => handle.result())
      .then(
        (result) => this.run.absorb(result, chunk.count),
        (err: unknown) => {
          // A chunk that itself failed (not its image sets, which it records) is counted failed here;
          // its sets stay pending in MariaDB, so `cpflow retry` picks them up.
          if (!isCancellation(err)) {
            const error = err instanceof Error ? err.message : String(err);
            this.run.absorb({ stage: chunk.stage, done: 0, failed: chunk.count, skipped: 0, failures: [{ key: childId, stage: chunk.stage, error, attempts: 1 }] }, chunk.count);
          }
        },
      )
      .finally(() => {
        // Groups the child never reported (it failed as a whole) fail their later stages' partitions.
        const left = this.unreported.get(childId);
        this.unreported.delete(childId);
        for (const group of left?.groups ?? []) this.reports.push({ stage: chunk.stage, group, ok: false, error: `chunk ${childId} ended before group ${group} did` });
        this.children.delete(childId);
        this.changed = true;
      });
  }
}

function cursor(stage: string, partition: string): PartitionCursor {
  return { stage, partition, afterSetId: 0, afterGroup: '', exhausted: false };
}
