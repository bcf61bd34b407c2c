import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { closeDb, db, getExperiment, imageSetCounts, type ExperimentRow } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { isTerminal } from '../../core/model';
import { workflowIdFor } from '../../core/model/names';
import { getBytes, layout } from '../../core/s3';
import { connectClient } from '../../core/temporal';
import { submit } from '../../starter/submit';
import { ensureBenchDatabase, ensureBenchNamespace } from '../bench/isolation';
import { terminateLeftovers } from '../bench/experiment-run';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import { provenanceSchema } from '../../activities/provenance';
import type { StackEnv } from '../../deploy/local/services';
import {
  readCsvFromS3,
  requireStack,
  startWatcher,
  startWorkers,
  tempDir,
  teardown,
  uniqueName,
  waitForExperiment,
  type ManagedProcess,
} from '../support/harness';

/**
 * Issue 10, item 1: no engine work on the event loop. One worker process (all pools, 2 analysis
 * slots) analyses a 10240 × 10240 16-bit image with the builtin engine, which takes far longer than
 * the 20 s heartbeat time-out, while another experiment's sets go through the same process. The big
 * set must be analysed exactly once (attempt 1: its heartbeats never lapsed) with the right nucleus
 * count, and the other experiment must finish while the big set is still being segmented.
 *
 * Runs in a database and Temporal namespace of its own, so no other test's watcher or worker takes
 * its experiments and the process under test does all the work.
 */
jest.setTimeout(900_000);

const DATABASE = 'cpflow_test_bigimage';
const NAMESPACE = 'cpflow-test-bigimage';
const SIZE = 10240;
const GRID = 20;
const RADIUS = 10;

const project = uniqueName('bigimage');
const saved = { db: process.env.CPFLOW_DB_NAME, namespace: process.env.CPFLOW_TEMPORAL_NAMESPACE };
let client: Client | undefined;
let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
let bigDir: string;
let smallDir: string;

/** A flat 16-bit field with GRID² bright discs well apart: the builtin engine must find every one. */
async function writeBigImage(dir: string): Promise<void> {
  const pixels = new Uint16Array(SIZE * SIZE).fill(3000);
  const step = SIZE / GRID;
  for (let i = 0; i < GRID; i++) {
    for (let j = 0; j < GRID; j++) {
      const cx = Math.round(step * (i + 0.5));
      const cy = Math.round(step * (j + 0.5));
      for (let y = -RADIUS; y <= RADIUS; y++) {
        for (let x = -RADIUS; x <= RADIUS; x++) if (x * x + y * y <= RADIUS * RADIUS) pixels[(cy + y) * SIZE + cx + x] = 40000;
      }
    }
  }
  await sharp(pixels, { raw: { width: SIZE, height: SIZE, channels: 1 } })
    .toColourspace('grey16')
    .tiff({ compression: 'deflate' })
    .toFile(path.join(dir, 'BIG_A01_s1_wDNA.tif'));
}

/** Heartbeat details of the experiment's running analysis activities (what the worker says it is doing). */
async function runningDetails(experimentId: number): Promise<string[]> {
  if (!client) return [];
  const details: string[] = [];
  const query = `WorkflowId STARTS_WITH '${workflowIdFor(experimentId)}-chunk' AND ExecutionStatus = 'Running'`;
  for await (const w of client.workflow.list({ query })) {
    const d = await client.workflow.getHandle(w.workflowId).describe();
    for (const a of d.raw.pendingActivities ?? []) {
      for (const payload of a.heartbeatDetails?.payloads ?? []) {
        const value = defaultPayloadConverter.fromPayload<{ detail?: string }>(payload);
        if (value?.detail) details.push(value.detail);
      }
    }
  }
  return details;
}

beforeAll(async () => {
  requireStack();
  const env = process.env as unknown as StackEnv;
  await ensureBenchDatabase(env, DATABASE);
  await ensureBenchNamespace(env, NAMESPACE);
  process.env.CPFLOW_DB_NAME = DATABASE;
  process.env.CPFLOW_TEMPORAL_NAMESPACE = NAMESPACE;
  await closeDb();
  client = await connectClient();
  await terminateLeftovers(client, (line) => console.log(line));

  bigDir = tempDir('bigimage');
  smallDir = tempDir('bigimage-small');
  await Promise.all([
    writeBigImage(bigDir),
    generateSyntheticPlate({ outDir: smallDir, plate: 'S1', rows: 2, cols: 4, seed: 11, bitDepth: 16 }).then(() =>
      fs.rmSync(path.join(smallDir, 'ground-truth.json'), { force: true }),
    ),
  ]);
  // Every pool in one process, as on a laptop: the big image must not stall its other activities.
  [workers, watcher] = await Promise.all([startWorkers({ CPFLOW_ANALYZE_SLOTS: '2' }), startWatcher()]);
}, 600_000);

afterAll(async () => {
  await teardown(workers, watcher);
  await client?.connection.close();
  for (const dir of [bigDir, smallDir]) if (dir) fs.rmSync(dir, { recursive: true, force: true });
  process.env.CPFLOW_DB_NAME = saved.db;
  process.env.CPFLOW_TEMPORAL_NAMESPACE = saved.namespace;
  if (saved.db === undefined) delete process.env.CPFLOW_DB_NAME;
  if (saved.namespace === undefined) delete process.env.CPFLOW_TEMPORAL_NAMESPACE;
});

describe(`a ${SIZE}² image`, () => {
  it('is analysed exactly once, with the right count, while another experiment completes beside it', async () => {
    const rule = GROUPING_PRESETS.synthetic!.rule;
    const big = await submit({ project, name: 'big', folder: bigDir, grouping: rule, engine: 'builtin' });
    expect(big.imageSets).toBe(1);

    // Wait until the worker reports segmenting the big image (its heartbeats say so).
    const deadline = Date.now() + 300_000;
    let seen: string[] = [];
    while (!seen.some((d) => d.includes('segmenting'))) {
      if (Date.now() > deadline) throw new Error(`the big set never started segmenting; last details ${JSON.stringify(seen)}`);
      await new Promise((r) => setTimeout(r, 500));
      seen = await runningDetails(big.experimentId);
    }
    const segmentingSince = Date.now();

    const small = await submit({ project, name: 'small', folder: smallDir, grouping: rule, engine: 'builtin' });
    const smallDone = await waitForExperiment(small.experimentId, (e) => isTerminal(e.status), 300_000);
    const bigWhenSmallDone = (await getExperiment(await db(), big.experimentId)) as ExperimentRow;
    const bigCountsThen = await imageSetCounts(await db(), big.experimentId);

    // The small experiment finished (all 8 sets, summary written) while the big set was still in the engine.
    expect(smallDone.status).toBe('done');
    expect({ total: smallDone.total_sets, done: smallDone.done_sets }).toEqual({ total: 8, done: 8 });
    expect(bigWhenSmallDone.status).toBe('running');
    expect(bigCountsThen.done).toBe(0);
    console.log(`small experiment done ${((Date.now() - segmentingSince) / 1000).toFixed(1)} s after the big set began segmenting`);

    const bigDone = await waitForExperiment(big.experimentId, (e) => isTerminal(e.status), 600_000);
    expect(bigDone.status).toBe('done');
    const [row] = await (await db()).query<Array<{ attempts: number; status: string }>>(
      'SELECT attempts, status FROM image_set WHERE experiment_id = ?',
      [big.experimentId],
    );
    // Attempt 1: no heartbeat time-out, no retry, analysed once.
    expect(row).toEqual({ attempts: 1, status: 'done' });
    const summary = await readCsvFromS3(bigDone.summary_uri!);
    expect(summary).toHaveLength(1);
    expect(Number(summary[0].Count_Nuclei)).toBe(GRID * GRID);
    const provenance = provenanceSchema.parse(
      JSON.parse((await getBytes(bigDone.bucket, `${layout.setPrefix(big.experimentId, 'BIG-A01-s1')}provenance.json`)).toString('utf8')),
    );
    expect(provenance.worker.attempt).toBe(1);
    const seconds = (Date.parse(provenance.finishedAt) - Date.parse(provenance.startedAt)) / 1000;
    console.log(`big set analysed in ${seconds.toFixed(1)} s (heartbeat time-out 20 s), attempt ${provenance.worker.attempt}`);
    expect(workers?.output()).not.toMatch(/[Hh]eartbeat timeout/);
  });
});
