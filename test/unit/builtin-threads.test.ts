import { promises as fs } from 'fs';
import os from 'os';
import path from 'path';
import sharp from 'sharp';
import { closeBuiltinThreadPool, createBuiltinEngine } from '../../activities/engines/builtin';
import { EngineSlots } from '../../activities/engine-slots';
import type { EngineImageSet } from '../../activities/engines/types';

/**
 * Issue 10, item 1: the builtin engine works in a worker-thread pool, so the calling thread keeps
 * running its timers (heartbeats) while a large image is segmented; cancellation and the engine
 * time-out terminate the thread's work at once and the pool goes on serving. Engine slots bound how
 * many engine runs a worker makes at once, and a cancelled wait gives its place up.
 */
jest.setTimeout(180_000);

const SIZE = 3072;
let root: string;
let big: EngineImageSet;
let small: EngineImageSet;

async function discs(file: string, size: number, grid: number): Promise<void> {
  const pixels = new Uint16Array(size * size).fill(2500);
  const step = size / grid;
  const r = 9;
  for (let i = 0; i < grid; i++) {
    for (let j = 0; j < grid; j++) {
      const cx = Math.round(step * (i + 0.5));
      const cy = Math.round(step * (j + 0.5));
      for (let y = -r; y <= r; y++) for (let x = -r; x <= r; x++) if (x * x + y * y <= r * r) pixels[(cy + y) * size + cx + x] = 42000;
    }
  }
  await sharp(pixels, { raw: { width: size, height: size, channels: 1 } }).toColourspace('grey16').tiff({ compression: 'deflate' }).toFile(file);
}

const dirs = async (name: string) => {
  const outDir = path.join(root, name, 'out');
  const tmpDir = path.join(root, name, 'tmp');
  await fs.mkdir(outDir, { recursive: true });
  await fs.mkdir(tmpDir, { recursive: true });
  return { outDir, tmpDir };
};

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'cpflow-threads-'));
  await discs(path.join(root, 'big.tif'), SIZE, 12);
  await discs(path.join(root, 'small.tif'), 256, 4);
  big = { key: 'BIG', metadata: {}, files: [{ channel: 'DNA', path: path.join(root, 'big.tif') }] };
  small = { key: 'SMALL', metadata: {}, files: [{ channel: 'DNA', path: path.join(root, 'small.tif') }] };
});

afterAll(async () => {
  await closeBuiltinThreadPool();
  await fs.rm(root, { recursive: true, force: true });
});

describe('the builtin engine in worker threads', () => {
  it('keeps the calling thread free while a large image is analysed, with the right result', async () => {
    let last = Date.now();
    let maxGap = 0;
    const timer = setInterval(() => {
      const now = Date.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
    }, 20);
    const started = Date.now();
    const result = await createBuiltinEngine().run({ imageSets: [big], ...(await dirs('free')) });
    const took = Date.now() - started;
    clearInterval(timer);
    const image = await fs.readFile(path.join(root, 'free', 'out', 'BIG', 'Image.csv'), 'utf8');
    expect(result.sets).toEqual([{ key: 'BIG', files: ['Image.csv', 'Nuclei.csv', 'Experiment.csv'] }]);
    expect(image).toMatch(/^ImageNumber,Count_Nuclei,/);
    expect(image.split('\n')[1]?.split(',')[1]).toBe(String(12 * 12));
    // Segmenting the image takes one long synchronous stretch; on this thread it would stop the timer
    // for about as long. In a worker thread the timer keeps ticking.
    expect(maxGap).toBeLessThan(took / 3);
  });

  it('stops a running analysis at once when cancelled, and the pool goes on serving', async () => {
    const controller = new AbortController();
    const run = createBuiltinEngine().run({
      imageSets: [big],
      ...(await dirs('cancel')),
      signal: controller.signal,
      onProgress: (detail) => {
        if (detail.includes('segmenting')) controller.abort();
      },
    });
    await expect(run).rejects.toMatchObject({ name: 'AbortError' });
    const after = await createBuiltinEngine().run({ imageSets: [small], ...(await dirs('after-cancel')) });
    expect(after.sets.map((s) => s.key)).toEqual(['SMALL']);
  });

  it('gives up when the engine time-out passes', async () => {
    await expect(createBuiltinEngine().run({ imageSets: [big], ...(await dirs('timeout')), timeoutMs: 200 })).rejects.toMatchObject({
      name: 'TimeoutError',
      message: expect.stringContaining('BIG'),
    });
  });
});

describe('engine slots', () => {
  it('lets `size` runs in at once, hands a freed slot to the next waiter, and drops a cancelled wait', async () => {
    const slots = new EngineSlots(2);
    const a = await slots.acquire();
    const b = await slots.acquire();
    expect(slots.busy).toBe(2);
    const order: string[] = [];
    const controller = new AbortController();
    const cancelled = slots.acquire(controller.signal).then(
      () => order.push('cancelled one got a slot'),
      (err: Error) => order.push(err.name),
    );
    const c = slots.acquire().then((release) => {
      order.push('c');
      return release;
    });
    controller.abort();
    await cancelled;
    a();
    a(); // a second release of the same slot changes nothing
    const releaseC = await c;
    expect(order).toEqual(['AbortError', 'c']);
    expect(slots.busy).toBe(2);
    b();
    releaseC();
    expect(slots.busy).toBe(0);
  });
});
