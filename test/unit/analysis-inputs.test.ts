import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { DefaultLogger } from '@temporalio/worker';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createAnalysisActivities, type AnalysisDeps } from '../../activities/analyze';
import type { ChunkManifest } from '../../activities/manifest';
import type { Engine, EngineRunInput } from '../../activities/engines';
import { DEFAULTS, defaultDispatch, type ImageSetOutcome } from '../../core/model';
import type { ObjectStore, StoredObject } from '../../core/s3';
import { declaredSizeTiff } from '../fixtures/big-images';

/**
 * The analysis activity verifies what it is about to analyse against what was registered, with an
 * in-memory object store and an engine that records what it was given (no S3, no Temporal server).
 */

const sha = (b: Buffer | string): string => crypto.createHash('sha256').update(b).digest('hex');

function memoryStore(objects: Map<string, Buffer>): ObjectStore {
  const stored = (bucket: string, key: string, bytes: Buffer): StoredObject => {
    objects.set(`${bucket}/${key}`, bytes);
    return { uri: `s3://${bucket}/${key}`, size: bytes.length, checksum: `sha256:${sha(bytes)}` };
  };
  return {
    getBytes: async (bucket, key) => {
      const b = objects.get(`${bucket}/${key}`);
      if (!b) throw new Error(`no ${key}`);
      return b;
    },
    getBytesIfExists: async (bucket, key) => objects.get(`${bucket}/${key}`),
    downloadIfExists: async (bucket, key, localPath) => {
      const b = objects.get(`${bucket}/${key}`);
      if (!b) return undefined;
      await fs.promises.writeFile(localPath, b);
      return { size: b.length, sha256: sha(b), etag: crypto.createHash('md5').update(b).digest('hex') };
    },
    downloadToFile: async (bucket, key, localPath) => fs.promises.writeFile(localPath, objects.get(`${bucket}/${key}`) ?? Buffer.alloc(0)),
    putFile: async (bucket, key, localPath) => stored(bucket, key, await fs.promises.readFile(localPath)),
    putBytes: async (bucket, key, body) => stored(bucket, key, Buffer.from(body)),
  };
}

/** Writes one Image.csv per set; records the sets it was asked to run. */
function recordingEngine(ran: string[]): Engine {
  return {
    identity: async () => ({ name: 'builtin', version: 'test' }),
    run: async (input: EngineRunInput) => {
      for (const set of input.imageSets) {
        ran.push(set.key);
        await fs.promises.mkdir(path.join(input.outDir, set.key), { recursive: true });
        await fs.promises.writeFile(path.join(input.outDir, set.key, 'Image.csv'), 'ImageNumber\n1\n');
      }
      return { engine: { name: 'builtin', version: 'test' }, sets: input.imageSets.map((s) => ({ key: s.key, files: ['Image.csv'] })) };
    },
  };
}

function setup(files: Record<string, { registered: Buffer; now: Buffer }>) {
  const objects = new Map<string, Buffer>();
  const sets: ChunkManifest['sets'] = Object.entries(files).map(([key, f], i) => {
    objects.set(`b/inputs/1/${key}.tif`, f.now);
    return {
      id: i + 1,
      key,
      group: '',
      metadata: {},
      files: [{ channel: 'DNA', uri: `s3://b/inputs/1/${key}.tif`, size: f.registered.length, checksum: `sha256:${sha(f.registered)}` }],
    };
  });
  const manifest: ChunkManifest = {
    experimentId: 1,
    bucket: 'b',
    engine: 'builtin',
    engineOptions: {},
    dispatch: { ...defaultDispatch(), batchSize: 2 },
    stage: '',
    groupBy: [],
    input: 'files',
    stageInputs: [],
    pipelineUri: null,
    pipelineSha256: null,
    sets,
  };
  const ran: string[] = [];
  const deps: AnalysisDeps = {
    store: memoryStore(objects),
    readManifest: async () => manifest,
    engineFor: () => recordingEngine(ran),
    workDir: () => fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-analysis-unit-')),
  };
  return { deps, ran, objects };
}

const run = (deps: AnalysisDeps, indices: number[]): Promise<ImageSetOutcome[]> =>
  // Failures are what these tests expect: the environment's logger would print each one.
  new MockActivityEnvironment({ attempt: 1 }, { logger: new DefaultLogger('ERROR', () => undefined) }).run(createAnalysisActivities(deps).analyzeImageSets, { bucket: 'b', manifestKey: 'm.json', indices });

describe('the analysis activity checks its inputs before the engine sees them', () => {
  it('fails a set whose input changed since it was registered, naming the key and both checksums, without retrying', async () => {
    const original = Buffer.from('original image bytes');
    const overwritten = Buffer.from('another submit wrote these');
    const { deps, ran } = setup({ S1: { registered: original, now: overwritten } });
    const failure = await run(deps, [0]).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(failure).toBeInstanceOf(ApplicationFailure);
    expect((failure as ApplicationFailure).nonRetryable).toBe(true);
    expect((failure as ApplicationFailure).type).toBe('ImageSetInputError');
    expect((failure as Error).message).toBe(
      `image set S1: image s3://b/inputs/1/S1.tif (channel DNA) changed since it was registered: registered sha256:${sha(original)}, found sha256:${sha(overwritten)}`,
    );
    expect(ran).toEqual([]);
  });

  it('in a batch, fails only the changed set and analyses its neighbour', async () => {
    const good = Buffer.from('good');
    const { deps, ran } = setup({ S1: { registered: Buffer.from('was'), now: Buffer.from('is now') }, S2: { registered: good, now: good } });
    const outcomes = await run(deps, [0, 1]);
    expect(outcomes.map((o) => [o.imageSetId, o.status])).toEqual([
      [1, 'failed'],
      [2, 'done'],
    ]);
    expect(outcomes[0]!.error).toMatch(/^image set S1: image s3:\/\/b\/inputs\/1\/S1\.tif \(channel DNA\) changed since it was registered/);
    expect(ran).toEqual(['S2']);
  });

  it('refuses an image whose header declares more pixels than the limit, before decoding', async () => {
    const huge = declaredSizeTiff(23170, 23170);
    const { deps, ran } = setup({ BIG: { registered: huge, now: huge } });
    const failure = (await run(deps, [0]).catch((err: unknown) => err)) as ApplicationFailure;
    expect(failure.nonRetryable).toBe(true);
    expect(failure.message).toBe(
      `image set BIG: image s3://b/inputs/1/BIG.tif (channel DNA) is 23170×23170 pixels (536.8 Mpx), above the limit of ${(DEFAULTS.MAX_IMAGE_PIXELS / 1e6).toFixed(1)} Mpx per image (CPFLOW_MAX_IMAGE_PIXELS)`,
    );
    expect(ran).toEqual([]);
  });
});
