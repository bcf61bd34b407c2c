import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { createAnalysisActivities, type AnalysisDeps } from '../../activities/analyze';
import { ImageSetInputError, type Engine, type EngineRunInput } from '../../activities/engines';
import type { ChunkManifest } from '../../activities/manifest';
import { defaultDispatch, type AnalyzeInput, type ImageSetOutcome } from '../../core/model';
import { layout, s3Uri, type ObjectStore, type StoredObject } from '../../core/s3';

/**
 * The analysis activity's riskiest logic, in Temporal's MockActivityEnvironment with an in-memory
 * object store and a scripted engine: a bad set in a batch is found by rerunning the batch one set
 * at a time; a set whose provenance.json matches is skipped without running the engine (and rerun
 * when an input changed); engine failures are capped at maxEngineAttempts while outages are not, and
 * narrowed down to the set that fails in a batch.
 */

const BUCKET = 'unit';
/** The activities' own failure logs are expected here; keep the test output readable. */
const quietLogger = new DefaultLogger('ERROR', () => undefined);

/** S3 as a Map, with the same semantics the activity relies on (missing → undefined, sha256 while downloading). */
class MemoryStore implements ObjectStore {
  readonly objects = new Map<string, Buffer>();
  private stored(bucket: string, key: string, bytes: Buffer): StoredObject {
    this.objects.set(`${bucket}/${key}`, bytes);
    return { uri: s3Uri(bucket, key), size: bytes.length, checksum: `sha256:${crypto.createHash('sha256').update(bytes).digest('hex')}` };
  }
  async getBytes(bucket: string, key: string): Promise<Buffer> {
    const b = this.objects.get(`${bucket}/${key}`);
    if (!b) throw new Error(`no object ${bucket}/${key}`);
    return b;
  }
  async getBytesIfExists(bucket: string, key: string): Promise<Buffer | undefined> {
    return this.objects.get(`${bucket}/${key}`);
  }
  async downloadIfExists(bucket: string, key: string, localPath: string): Promise<{ size: number; sha256: string } | undefined> {
    const b = this.objects.get(`${bucket}/${key}`);
    if (!b) return undefined;
    await fs.promises.writeFile(localPath, b);
    return { size: b.length, sha256: crypto.createHash('sha256').update(b).digest('hex') };
  }
  async downloadToFile(bucket: string, key: string, localPath: string): Promise<void> {
    await fs.promises.writeFile(localPath, await this.getBytes(bucket, key));
  }
  async putFile(bucket: string, key: string, localPath: string): Promise<StoredObject> {
    return this.stored(bucket, key, await fs.promises.readFile(localPath));
  }
  async putBytes(bucket: string, key: string, body: string | Buffer): Promise<StoredObject> {
    return this.stored(bucket, key, typeof body === 'string' ? Buffer.from(body) : body);
  }
}

/** An engine that reads each set's files: "BAD" content is an input error; `failWith` makes every run throw. */
class ScriptedEngine implements Engine {
  runs: string[][] = [];
  failWith: Error | undefined;
  /** A set that crashes the engine (exit 139) whenever it is in the run. */
  crashOn: string | undefined;
  async identity() {
    return { name: 'scripted', version: '1' };
  }
  async run(input: EngineRunInput) {
    this.runs.push(input.imageSets.map((s) => s.key));
    if (this.failWith) throw this.failWith;
    if (input.imageSets.some((s) => s.key === this.crashOn)) throw new Error('CellProfiler failed (exit 139, no done file)');
    for (const set of input.imageSets) {
      for (const f of set.files) {
        if ((await fs.promises.readFile(f.path, 'utf8')) === 'BAD') throw new ImageSetInputError(`image set ${set.key}: cannot decode ${path.basename(f.path)}`, set.key);
      }
    }
    for (const set of input.imageSets) {
      await fs.promises.mkdir(path.join(input.outDir, set.key), { recursive: true });
      await fs.promises.writeFile(path.join(input.outDir, set.key, 'Image.csv'), `ImageNumber,Count_Nuclei\n${set.imageNumber},3\n`);
    }
    return { engine: await this.identity(), sets: input.imageSets.map((s) => ({ key: s.key, files: ['Image.csv'] })) };
  }
}

function setup(contents: string[], maxEngineAttempts = 3) {
  const store = new MemoryStore();
  const engine = new ScriptedEngine();
  const sets = contents.map((content, i) => {
    const key = `inputs/e/S${i + 1}_DNA.tif`;
    const stored = store.putBytes(BUCKET, key, content);
    return { id: 101 + i, key: `S${i + 1}`, metadata: { Well: `A0${i + 1}` }, stored };
  });
  const manifest: ChunkManifest = {
    experimentId: 7,
    bucket: BUCKET,
    engine: 'builtin',
    engineOptions: {},
    dispatch: { ...defaultDispatch(), maxEngineAttempts },
    stage: '',
    groupBy: [],
    input: 'files',
    stageInputs: [],
    pipelineUri: null,
    pipelineSha256: null,
    sets: [],
  };
  const ready = Promise.all(sets.map((s) => s.stored)).then((stored) => {
    manifest.sets = sets.map((s, i) => ({ id: s.id, key: s.key, group: '', metadata: s.metadata, files: [{ channel: 'DNA', ...stored[i]! }] }));
  });
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-analyze-unit-'));
  const deps: AnalysisDeps = { store, readManifest: async () => manifest, engineFor: () => engine, workDir: () => workDir };
  const { analyzeImageSets } = createAnalysisActivities(deps);
  const input: AnalyzeInput = { bucket: BUCKET, manifestKey: 'manifest.json', indices: contents.map((_, i) => i) };
  const analyze = async (attempt = 1, only?: number[]): Promise<ImageSetOutcome[]> => {
    await ready;
    return new MockActivityEnvironment({ attempt }, { logger: quietLogger }).run(analyzeImageSets, only ? { ...input, indices: only } : input);
  };
  const marker = (key: string) => store.objects.get(`${BUCKET}/${layout.setPrefix(7, key)}provenance.json`);
  return { store, engine, manifest, analyze, marker, ready };
}

describe('analyzeImageSets in MockActivityEnvironment', () => {
  it('reruns a batch one set at a time when one set is bad, failing only that set', async () => {
    const { engine, analyze, marker } = setup(['ok-1', 'BAD', 'ok-3']);
    const outcomes = await analyze();
    expect(engine.runs).toEqual([['S1', 'S2', 'S3'], ['S1'], ['S2'], ['S3']]);
    const byId = new Map(outcomes.map((o) => [o.imageSetId, o]));
    expect(byId.get(101)).toMatchObject({ status: 'done', skipped: false });
    expect(byId.get(102)).toMatchObject({ status: 'failed', error: expect.stringContaining('image set S2: cannot decode S2_DNA.tif') });
    expect(byId.get(103)).toMatchObject({ status: 'done', skipped: false });
    expect(marker('S1')).toBeDefined();
    expect(marker('S2')).toBeUndefined();
    expect(marker('S3')).toBeDefined();
    // Each done set's tables carry its own id as ImageNumber and its provenance names its input checksum.
    const provenance = JSON.parse(marker('S3')!.toString('utf8'));
    expect(provenance.inputs[0].sha256).toBe(crypto.createHash('sha256').update('ok-3').digest('hex'));
  });

  it('fails a single bad set non-retryably, naming it', async () => {
    const { analyze } = setup(['BAD']);
    const err = await analyze().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: 'ImageSetInputError', nonRetryable: true, message: expect.stringContaining('image set S1') });
  });

  it('skips a set whose provenance matches, and reruns it when its input changed', async () => {
    const { engine, analyze, store, manifest, ready } = setup(['ok-1', 'ok-2']);
    await analyze();
    expect(engine.runs).toEqual([['S1', 'S2']]);
    const again = await analyze(2);
    expect(engine.runs).toHaveLength(1);
    expect(again.map((o) => [o.imageSetId, o.status, o.skipped])).toEqual([
      [101, 'done', true],
      [102, 'done', true],
    ]);
    // A skipped set reports the same result rows a fresh run records, provenance.json included.
    expect(again[0]!.results?.map((r) => r.kind).sort()).toEqual(['provenance', 'table:Image']);

    // A new upload of S2's image (new checksum in the manifest) is new work.
    await ready;
    const replaced = await store.putBytes(BUCKET, 'inputs/e/S2_DNA.tif', 'ok-2-v2');
    manifest.sets[1]!.files[0] = { channel: 'DNA', ...replaced };
    const third = await analyze(3);
    expect(engine.runs).toEqual([['S1', 'S2'], ['S2']]);
    expect(third.find((o) => o.imageSetId === 101)).toMatchObject({ skipped: true });
    expect(third.find((o) => o.imageSetId === 102)).toMatchObject({ skipped: false, status: 'done' });
  });

  it('retries an engine crash until maxEngineAttempts, then fails the set non-retryably', async () => {
    const { engine, analyze } = setup(['ok-1'], 3);
    engine.failWith = new Error('CellProfiler failed (exit 139, no done file)');
    for (const attempt of [1, 2]) {
      const err = await analyze(attempt).catch((e: unknown) => e);
      expect(err).not.toBeInstanceOf(ApplicationFailure); // plain error: Temporal retries it
      expect((err as Error).message).toMatch(/exit 139/);
    }
    const last = await analyze(3).catch((e: unknown) => e);
    expect(last).toBeInstanceOf(ApplicationFailure);
    expect(last).toMatchObject({ type: 'EngineFailure', nonRetryable: true });
    expect((last as ApplicationFailure).details?.[0]).toMatchObject({ setKey: 'S1', attempt: 3 });
  });

  it('narrows an engine crash in a batch down to the set that crashes: only it is retried, then failed', async () => {
    const { engine, analyze, marker } = setup(['ok-1', 'ok-2', 'ok-3'], 3);
    engine.crashOn = 'S2';
    // Attempt 1: the batch crashes, the sets run alone; S1 and S3 are done, S2's crash is retried.
    const first = await analyze(1).catch((e: unknown) => e);
    expect(first).not.toBeInstanceOf(ApplicationFailure);
    expect((first as Error).message).toMatch(/exit 139/);
    expect(engine.runs).toEqual([['S1', 'S2', 'S3'], ['S1'], ['S2'], ['S3']]);
    expect([marker('S1'), marker('S2'), marker('S3')].map((m) => m !== undefined)).toEqual([true, false, true]);
    // Attempt 2 runs S2 alone (the others are skipped by their provenance) and crashes again.
    await expect(analyze(2)).rejects.toThrow(/exit 139/);
    expect(engine.runs.slice(4)).toEqual([['S2']]);
    // The last attempt fails S2 alone; the others stay done.
    const last = await analyze(3);
    expect(engine.runs.slice(5)).toEqual([['S2']]);
    expect(last.map((o) => [o.imageSetId, o.status, o.skipped ?? false, o.attempts])).toEqual([
      [101, 'done', true, 3],
      [103, 'done', true, 3],
      [102, 'failed', false, 3],
    ]);
    expect(last.find((o) => o.imageSetId === 102)?.error).toMatch(/exit 139/);
  });

  it('reports engine seconds per analysed set and the batch size on every outcome', async () => {
    const { analyze } = setup(['ok-1', 'ok-2']);
    const outcomes = await analyze();
    for (const o of outcomes) {
      expect(o.batchSize).toBe(2);
      expect(o.engineSeconds).toBeGreaterThanOrEqual(0);
      expect(o.engineSeconds).toBeLessThan(5);
    }
    const skipped = await analyze(2, [0]);
    expect(skipped[0]).toMatchObject({ skipped: true, batchSize: 1 });
    expect(skipped[0]?.engineSeconds).toBeUndefined();
  });

  it('never counts an outage against the attempt cap', async () => {
    const { engine, analyze } = setup(['ok-1']);
    engine.failWith = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9000'), { code: 'ECONNREFUSED' });
    const err = await analyze(50).catch((e: unknown) => e);
    expect(err).not.toBeInstanceOf(ApplicationFailure);
    expect((err as Error).message).toMatch(/ECONNREFUSED/);
  });
});
