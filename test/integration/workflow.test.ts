import { WorkflowFailedError } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, DefaultLogger, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { ANALYSIS_QUEUES, DEFAULTS, SEARCH_ATTRIBUTE_KEYS, TASK_QUEUES, type ExperimentProgress } from '../../core/model';
import type { ExperimentWorkflowInput } from '../../workflows/experiment';
import { imageSetsAddedSignal, progressQuery, sealedSignal } from '../../workflows/progress';
import { FakeLab } from '../support/fake-lab';

/**
 * The workflows' logic against Temporal's own servers (the dev server and the time-skipping test
 * server, both from the binaries the local stack installs), with in-memory fakes for the activities:
 * fan-out through chunk children, the window bound, failure isolation, streaming sets, the seal,
 * cancellation, and bounded history.
 */
jest.setTimeout(300_000);

let bundle: WorkflowBundleWithSourceMap;

beforeAll(async () => {
  // Only warnings from the in-process workers: their INFO lines would drown the test output.
  Runtime.install({ logger: new DefaultLogger('WARN') });
  bundle = await bundleWorkflowCode({ workflowsPath: require.resolve('../../workflows'), logger: { log: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined, trace: () => undefined } });
});

async function withWorkers<T>(env: TestWorkflowEnvironment, lab: FakeLab, fn: () => Promise<T>, analyzeSlots = 8): Promise<T> {
  const activities = lab.activities();
  const workers = await Promise.all([
    Worker.create({ connection: env.nativeConnection, taskQueue: TASK_QUEUES.workflow, workflowBundle: bundle, activities }),
    Worker.create({ connection: env.nativeConnection, taskQueue: ANALYSIS_QUEUES.builtin, activities, maxConcurrentActivityTaskExecutions: analyzeSlots, maxHeartbeatThrottleInterval: '1s' }),
    Worker.create({ connection: env.nativeConnection, taskQueue: TASK_QUEUES.reduce, activities }),
  ]);
  const [w0, w1, w2] = workers;
  return w0!.runUntil(w1!.runUntil(w2!.runUntil(fn())));
}

function executable(kind: 'CPFLOW_TEMPORAL_TEST_SERVER' | 'CPFLOW_TEMPORAL_CLI'): { type: 'existing-path'; path: string } {
  const path = process.env[kind];
  if (!path) throw new Error(`${kind} is not set: run through \`npm test\`, which installs the binaries`);
  return { type: 'existing-path', path };
}

async function maxHistoryLength(env: TestWorkflowEnvironment, query: string): Promise<{ executions: number; maxEvents: number }> {
  let executions = 0;
  let maxEvents = 0;
  for await (const w of env.client.workflow.list({ query })) {
    executions++;
    const d = await env.client.workflow.getHandle(w.workflowId, w.runId).describe();
    maxEvents = Math.max(maxEvents, d.historyLength);
  }
  return { executions, maxEvents };
}

describe('on the time-skipping test server', () => {
  let env: TestWorkflowEnvironment;
  beforeAll(async () => {
    env = await TestWorkflowEnvironment.createTimeSkipping({ server: { executable: executable('CPFLOW_TEMPORAL_TEST_SERVER') } });
  });
  afterAll(async () => {
    await env?.teardown();
  });

  it('fans 1,000 sets out through chunk children within the window and isolates bad sets', async () => {
    const lab = new FakeLab(1_000, new Set([7, 512, 999]), 0, { window: 6, chunkSize: 300, concurrentChunks: 2 });
    const input: ExperimentWorkflowInput = { experimentId: 1, searchAttributes: false };
    const result = await withWorkers(env, lab, () =>
      env.client.workflow.execute('ExperimentWorkflow', { taskQueue: TASK_QUEUES.workflow, workflowId: 'exp-tsk-1', args: [input] }),
    ) as ExperimentProgress;
    expect(result).toMatchObject({ done: 997, failed: 3, phase: 'finished', total: 1000 });
    expect([...lab.analyzed.values()].every((n) => n === 1)).toBe(true);
    expect(lab.analyzed.size).toBe(1000);
    // Two chunk children at once, each with ceil(6/2) = 3 in flight.
    expect(lab.maxInFlight).toBeLessThanOrEqual(6);
    expect(lab.statuses).toEqual(['running', 'reducing', 'done_with_failures']);
    expect(lab.reduced).toBe(1);
    expect(lab.sets.filter((s) => s.status === 'failed').map((s) => s.id)).toEqual([7, 512, 999]);
  });

  it('adapts the batch size to the measured engine time per set, within the window; --batch-size wins', async () => {
    const run = async (id: number, lab: FakeLab) =>
      (await withWorkers(env, lab, () =>
        env.client.workflow.execute('ExperimentWorkflow', { taskQueue: TASK_QUEUES.workflow, workflowId: `exp-tsk-batch-${id}`, args: [{ experimentId: id, searchAttributes: false }] }),
      )) as ExperimentProgress;
    const sizesOf = (lab: FakeLab, manifestKey: string) => lab.batches.filter((b) => b.manifestKey === manifestKey).map((b) => b.size);

    // 5 ms a set (the no-op engine): after the first measurements, the largest batches (0.2 s of
    // overhead ≤ 5% of 64 × 5 ms is out of reach, so MAX_BATCH_SIZE), with at most the window's
    // share of activities in flight (8 / 2 chunks = 4 per chunk, 8 in all).
    const fast = new FakeLab(600, new Set(), 0, { window: 8, chunkSize: 200, concurrentChunks: 2, batchSizeExplicit: false });
    fast.engineSecondsPerSet = 0.005;
    const result = await run(11, fast);
    expect(result).toMatchObject({ done: 600, failed: 0, phase: 'finished', batching: { adaptive: true, batchSize: DEFAULTS.MAX_BATCH_SIZE } });
    expect(result.batching?.secondsPerSet).toBeCloseTo(0.005, 6);
    expect(fast.analyzed.size).toBe(600);
    expect([...fast.analyzed.values()].every((n) => n === 1)).toBe(true);
    expect(fast.maxInFlight).toBeLessThanOrEqual(8);
    // Sizes as a sorted multiset: batches scheduled in one workflow task reach the worker in any order.
    const sorted = (sizes: number[]) => [...sizes].sort((a, b) => a - b);
    const max = DEFAULTS.MAX_BATCH_SIZE;
    // Nothing measured yet: the window's 4 single sets measure, then the largest batches, then the rest.
    expect(sorted(sizesOf(fast, 'chunk-1'))).toEqual(sorted([1, 1, 1, 1, max, max, max, 200 - 4 - 3 * max]));
    // The third chunk starts from what the first ones measured: no single sets.
    expect(sorted(sizesOf(fast, 'chunk-401'))).toEqual(sorted([max, max, max, 200 - 3 * max]));
    expect(fast.batches.length).toBeLessThan(600 / 16);

    // 0.5 s a set (a small CellProfiler pipeline): 0.2 s ≤ 5% of 8 × 0.5 s, so batches of 8.
    const medium = new FakeLab(100, new Set(), 0, { window: 4, batchSizeExplicit: false });
    medium.engineSecondsPerSet = 0.5;
    const mediumResult = await run(14, medium);
    expect(mediumResult.batching).toMatchObject({ adaptive: true, batchSize: 8, secondsPerSet: 0.5 });
    expect(medium.maxInFlight).toBeLessThanOrEqual(4);

    // A minute a set (CellProfiler on a big image): one set per activity.
    const slow = new FakeLab(40, new Set(), 0, { window: 16, batchSizeExplicit: false });
    slow.engineSecondsPerSet = 60;
    const slowResult = await run(12, slow);
    expect(slow.batches.every((b) => b.size === 1)).toBe(true);
    expect(slowResult.batching).toMatchObject({ adaptive: true, batchSize: 1, secondsPerSet: 60 });

    // An explicit --batch-size wins over any measurement.
    const fixed = new FakeLab(40, new Set(), 0, { window: 16, batchSize: 3, batchSizeExplicit: true });
    fixed.engineSecondsPerSet = 0.005;
    const fixedResult = await run(13, fixed);
    expect(sorted(fixed.batches.map((b) => b.size))).toEqual([1, ...Array(13).fill(3)]);
    expect(fixedResult.batching).toEqual({ adaptive: false, batchSize: 3 });
  });

  it('ends failed when more than the allowed fraction of sets fail', async () => {
    const lab = new FakeLab(10, new Set([1, 2, 3, 4, 5, 6]));
    const result = await withWorkers(env, lab, () =>
      env.client.workflow.execute('ExperimentWorkflow', { taskQueue: TASK_QUEUES.workflow, workflowId: 'exp-tsk-2', args: [{ experimentId: 2, searchAttributes: false }] }),
    ) as ExperimentProgress;
    expect(result.failed).toBe(6);
    expect(lab.statuses[lab.statuses.length - 1]).toBe('failed');
  });

  it('runs the profiles step before reduce only for experiments with a platemap', async () => {
    const plain = new FakeLab(3);
    await withWorkers(env, plain, () =>
      env.client.workflow.execute('ExperimentWorkflow', { taskQueue: TASK_QUEUES.workflow, workflowId: 'exp-tsk-3', args: [{ experimentId: 3, searchAttributes: false }] }),
    );
    expect(plain.calls).toEqual(['reduceExperiment']);
    expect(plain.reduceInputs[0]?.profiles).toBeUndefined();

    const mapped = new FakeLab(3);
    mapped.profiles = 'ok';
    await withWorkers(env, mapped, () =>
      env.client.workflow.execute('ExperimentWorkflow', { taskQueue: TASK_QUEUES.workflow, workflowId: 'exp-tsk-4', args: [{ experimentId: 4, searchAttributes: false }] }),
    );
    expect(mapped.calls).toEqual(['computeProfiles', 'reduceExperiment']);
    expect(mapped.reduceInputs[0]?.profiles).toMatchObject({ ok: true, output: { reportDataUri: 's3://b/r.json', wells: 2 } });
    expect(mapped.statuses[mapped.statuses.length - 1]).toBe('done');
  });

  it('still reduces when the profiles step fails, then records the experiment failed with the reason', async () => {
    const lab = new FakeLab(3);
    lab.profiles = 'fail';
    await withWorkers(env, lab, () =>
      env.client.workflow.execute('ExperimentWorkflow', { taskQueue: TASK_QUEUES.workflow, workflowId: 'exp-tsk-5', args: [{ experimentId: 5, searchAttributes: false }] }),
    );
    // Non-retryable input error: one attempt, then reduce is told why (the report shows it).
    expect(lab.calls).toEqual(['computeProfiles', 'reduceExperiment']);
    expect(lab.reduceInputs[0]?.profiles).toEqual({ ok: false, error: 'wells B07 have results but are not in the platemap' });
    expect(lab.statuses[lab.statuses.length - 1]).toBe('failed');
    expect(lab.errors[lab.errors.length - 1]).toBe('profiles: wells B07 have results but are not in the platemap');
  });
});

describe('on the Temporal dev server', () => {
  let env: TestWorkflowEnvironment;
  beforeAll(async () => {
    env = await TestWorkflowEnvironment.createLocal({
      server: {
        executable: executable('CPFLOW_TEMPORAL_CLI'),
        searchAttributes: Object.values(SEARCH_ATTRIBUTE_KEYS),
      },
    });
  });
  afterAll(async () => {
    await env?.teardown();
  });

  it('accepts image sets while open and reduces only once sealed and drained', async () => {
    const lab = new FakeLab(5);
    lab.sealed = false;
    await withWorkers(env, lab, async () => {
      const handle = await env.client.workflow.start('ExperimentWorkflow', {
        taskQueue: TASK_QUEUES.workflow,
        workflowId: 'exp-open-1',
        args: [{ experimentId: 3 } satisfies ExperimentWorkflowInput],
      });
      const waitPhase = async (phase: string, done: number): Promise<ExperimentProgress> => {
        for (let i = 0; i < 200; i++) {
          const p = await handle.query(progressQuery);
          if (p.phase === phase && p.done === done) return p;
          await new Promise((r) => setTimeout(r, 100));
        }
        throw new Error(`never reached ${phase} with ${done} done`);
      };
      await waitPhase('waiting-for-images', 5);
      expect(lab.reduced).toBe(0);
      lab.addSets(4);
      await handle.signal(imageSetsAddedSignal);
      await waitPhase('waiting-for-images', 9);
      expect(lab.reduced).toBe(0);
      lab.sealed = true;
      await handle.signal(sealedSignal);
      const result = (await handle.result()) as ExperimentProgress;
      expect(result).toMatchObject({ done: 9, failed: 0, phase: 'finished', sealed: true });
      expect(lab.reduced).toBe(1);
      const d = await handle.describe();
      expect(d.searchAttributes.CpflowStatus).toEqual(['done']);
    });
  });

  it('cancels running activities and records the experiment as cancelled', async () => {
    const lab = new FakeLab(40, new Set(), 60_000, { window: 4 });
    // Engines that take a while to stop, each longer than the last.
    lab.stopDelaysMs = [0, 500, 1_000, 1_500];
    await withWorkers(env, lab, async () => {
      const handle = await env.client.workflow.start('ExperimentWorkflow', {
        taskQueue: TASK_QUEUES.workflow,
        workflowId: 'exp-cancel-1',
        args: [{ experimentId: 4 } satisfies ExperimentWorkflowInput],
      });
      for (let i = 0; i < 100 && lab.inFlight < 4; i++) await new Promise((r) => setTimeout(r, 100));
      expect(lab.inFlight).toBe(4);
      await handle.cancel();
      await expect(handle.result()).rejects.toBeInstanceOf(WorkflowFailedError);
      expect(lab.statuses[lab.statuses.length - 1]).toBe('cancelled');
      // Every activity confirmed its cancellation before the experiment was recorded as cancelled. The
      // chunk used to end on the first confirmation (3 of 4 here, twice in full runs; 1 of 4 with the
      // stop delays above).
      expect(lab.cancelledActivities).toBe(4);
      expect(lab.reduced).toBe(0);
    }, 4);
  });

  it('keeps every execution far below 10,240 history events with continue-as-new and children', async () => {
    const lab = new FakeLab(3_000, new Set(), 0, { window: 64, chunkSize: 250, concurrentChunks: 4 });
    const run = (): Promise<ExperimentProgress> =>
      env.client.workflow.execute('ExperimentWorkflow', {
        taskQueue: TASK_QUEUES.workflow,
        workflowId: 'exp-big-1',
        args: [{ experimentId: 5, historyEventsBudget: 40 } satisfies ExperimentWorkflowInput],
      }) as Promise<ExperimentProgress>;
    const result = await withWorkers(env, lab, run, 64);
    expect(result).toMatchObject({ done: 3000, failed: 0, total: 3000 });
    // A 40-event budget forces continue-as-new once children drain (how many times depends on how
    // many chunks a run starts before it is over budget); the counts survive it.
    expect(result.runsSoFar).toBeGreaterThanOrEqual(1);
    expect([...lab.analyzed.values()].every((n) => n === 1)).toBe(true);
    const stats = await maxHistoryLength(env, `WorkflowId STARTS_WITH 'exp-big-1'`);
    expect(stats.executions).toBeGreaterThanOrEqual(13); // the parent + 12 chunk children
    expect(stats.maxEvents).toBeLessThan(10_240);
  });

  describe('stages', () => {
    const stages = [
      { name: 'illum', grouped: true, dependents: ['analysis'] },
      { name: 'analysis', grouped: false, upstream: 'illum', dependents: [] },
    ];

    it("starts a plate's later stage as soon as that plate's group is done, with no barrier across plates", async () => {
      const lab = new FakeLab(0, new Set(), 0, { window: 8, concurrentChunks: 4 }, {
        stages,
        plates: ['P1', 'P2', 'P3'],
        sites: 2,
        delayFor: (stage, unit) => (stage === 'illum' ? (unit === 'P3' ? 3_000 : 200) : 100),
      });
      const result = (await withWorkers(env, lab, () =>
        env.client.workflow.execute('ExperimentWorkflow', {
          taskQueue: TASK_QUEUES.workflow,
          workflowId: 'exp-stages-1',
          args: [{ experimentId: 6, searchAttributes: false } satisfies ExperimentWorkflowInput],
        }),
      )) as ExperimentProgress;
      expect(result).toMatchObject({ done: 12, failed: 0, phase: 'finished' });
      expect(result.stages).toEqual([
        { name: 'illum', total: 6, done: 6, failed: 0, skipped: 0 },
        { name: 'analysis', total: 6, done: 6, failed: 0, skipped: 0 },
      ]);
      // Every group of illum ran once as one unit; every analysis set once.
      expect(lab.timeline.filter((t) => t.stage === 'illum').map((t) => t.unit).sort()).toEqual(['P1', 'P2', 'P3']);
      const p3Illum = lab.timeline.find((t) => t.stage === 'illum' && t.unit === 'P3')!;
      const p1Analysis = lab.timeline.filter((t) => t.stage === 'analysis' && t.unit.startsWith('P1-'));
      expect(p1Analysis).toHaveLength(2);
      for (const a of p1Analysis) expect(a.start).toBeLessThan(p3Illum.end);
      // Each analysis set started only after its own plate's illumination ended.
      for (const a of lab.timeline.filter((t) => t.stage === 'analysis')) {
        const illum = lab.timeline.find((t) => t.stage === 'illum' && t.unit === a.unit.slice(0, 2))!;
        expect(a.start).toBeGreaterThanOrEqual(illum.end);
      }
    });

    it('fails the later stage of a plate whose group failed, with the reason, and finishes the others', async () => {
      // Set 3 is illum P2's first site: the whole P2 group fails.
      const lab = new FakeLab(0, new Set([3]), 0, { window: 8 }, { stages, plates: ['P1', 'P2', 'P3'], sites: 2 });
      const result = (await withWorkers(env, lab, () =>
        env.client.workflow.execute('ExperimentWorkflow', {
          taskQueue: TASK_QUEUES.workflow,
          workflowId: 'exp-stages-2',
          args: [{ experimentId: 7, searchAttributes: false } satisfies ExperimentWorkflowInput],
        }),
      )) as ExperimentProgress;
      expect(result).toMatchObject({ done: 8, failed: 4, phase: 'finished' });
      expect(lab.sets.filter((s) => s.status === 'failed').map((s) => `${s.stage}/${s.key}`).sort()).toEqual([
        'analysis/P2-s1',
        'analysis/P2-s2',
        'illum/P2-s1',
        'illum/P2-s2',
      ]);
      expect(lab.timeline.some((t) => t.stage === 'analysis' && t.unit.startsWith('P2-'))).toBe(false);
      expect(result.recentFailures).toContainEqual(
        expect.objectContaining({ key: 'P2-s1', stage: 'analysis', error: expect.stringMatching(/stage illum group P2 failed: image set P2-s1: undecodable image/) }),
      );
      expect(lab.statuses[lab.statuses.length - 1]).toBe('done_with_failures');
    });
  });
});

