import { temporal } from '@temporalio/proto';
import type { NativeConnection } from '@temporalio/worker';
import { Runtime } from '@temporalio/worker';
import { DEFAULTS, TASK_QUEUES } from '../core/model';

/**
 * `cpflow_task_queue_backlog{task_queue}`: the approximate number of activity tasks waiting on each of
 * cpflow's queues, read from Temporal (DescribeTaskQueue with stats) every BACKLOG_POLL_MS by every
 * process running the workflow pool, and served beside the SDK's metrics. Several replicas report
 * the same value: aggregate with max(), not sum().
 */
export function pollQueueBacklog(connection: NativeConnection, namespace: string, log: (line: string) => void): () => void {
  const gauge = Runtime.instance().metricMeter.createGauge('cpflow_task_queue_backlog', 'int', 'tasks', 'Activity tasks waiting on the queue (approximate)');
  let warned = false;
  const poll = async (): Promise<void> => {
    for (const name of [TASK_QUEUES.analyze, TASK_QUEUES.reduce, TASK_QUEUES.workflow]) {
      try {
        const response = await connection.workflowService.describeTaskQueue({
          namespace,
          taskQueue: { name, kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
          taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
          reportStats: true,
        });
        const count = response.stats?.approximateBacklogCount;
        if (count !== undefined && count !== null) gauge.set(Number(count), { task_queue: name });
      } catch (err) {
        if (!warned) log(`queue backlog metric unavailable: ${err instanceof Error ? err.message : String(err)}`);
        warned = true;
      }
    }
  };
  void poll();
  const timer = setInterval(() => void poll(), DEFAULTS.BACKLOG_POLL_MS);
  timer.unref();
  return () => clearInterval(timer);
}
