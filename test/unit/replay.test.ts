import fs from 'node:fs';
import path from 'node:path';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { temporal } from '@temporalio/proto';
import { bundleWorkflowCode, DefaultLogger, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';

/**
 * Replays recorded histories (test/fixtures/histories, written by test/support/record-histories.ts)
 * against the current workflow code. A change that would break an experiment already running in
 * production — an activity moved, a timer added or removed, a child started in another order —
 * makes the replay non-deterministic and fails here. Needs no server.
 */
jest.setTimeout(120_000);

const HISTORIES = path.resolve(__dirname, '..', 'fixtures', 'histories');
/** Which workflow id each recording ran under (replay needs it: child workflow ids derive from it). */
const recorded: Array<{ file: string; workflowId: string }> = JSON.parse(fs.readFileSync(path.join(HISTORIES, 'index.json'), 'utf8'));
const files = recorded.map((r) => r.file).sort();

const { EventType } = temporal.api.enums.v1;
function eventTypes(file: string): string[] {
  const history = historyFromJSON(JSON.parse(fs.readFileSync(path.join(HISTORIES, file), 'utf8')));
  return (history.events ?? []).map((e) => EventType[e.eventType ?? 0] ?? String(e.eventType));
}

let bundle: WorkflowBundleWithSourceMap;
beforeAll(async () => {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const quiet = { log: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined, trace: () => undefined };
  bundle = await bundleWorkflowCode({ workflowsPath: require.resolve('../../workflows'), logger: quiet });
});

it('has the recorded histories the replay depends on', () => {
  expect(files).toEqual(
    expect.arrayContaining(['chunk.json', 'experiment-cancelled.json', 'experiment-continue-as-new.json', 'experiment-done.json', 'experiment-open.json']),
  );
  // The recordings cover what they claim: a continue-as-new, a cancellation, signals and children.
  expect(files.some((f) => f.startsWith('experiment-continue-as-new') && eventTypes(f).includes('EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW'))).toBe(true);
  expect(eventTypes('experiment-cancelled.json')).toContain('EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED');
  expect(eventTypes('experiment-open.json')).toContain('EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED');
  expect(eventTypes('experiment-done.json')).toContain('EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED');
  expect(eventTypes('chunk.json')).toContain('EVENT_TYPE_ACTIVITY_TASK_COMPLETED');
});

it.each(recorded)('replays $file deterministically with the current workflow code', async ({ file, workflowId }) => {
  const history = JSON.parse(fs.readFileSync(path.join(HISTORIES, file), 'utf8'));
  await expect(Worker.runReplayHistory({ workflowBundle: bundle, replayName: file }, history, workflowId)).resolves.toBeUndefined();
});
