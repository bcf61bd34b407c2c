import { promises as fs } from 'fs';
import os from 'os';
import path from 'path';
import sharp from 'sharp';
import { decodeGrayscale, gaussianBlur, labelComponents, otsuThreshold } from '../../activities/engines/builtin';
import { generateSyntheticPlate, SYNTHETIC_GROUPING } from '../fixtures/synthetic-plate';

// Image generation and segmentation share two cores with other suites; allow for a slow machine.
jest.setTimeout(60_000);

let root: string;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'cpflow-synthetic-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('generateSyntheticPlate', () => {
  it('is deterministic for a seed and differs between seeds', async () => {
    const a = await generateSyntheticPlate({ outDir: path.join(root, 'a'), rows: 1, cols: 2, seed: 11 });
    const b = await generateSyntheticPlate({ outDir: path.join(root, 'b'), rows: 1, cols: 2, seed: 11 });
    const c = await generateSyntheticPlate({ outDir: path.join(root, 'c'), rows: 1, cols: 2, seed: 12 });
    expect(b).toEqual(a);
    const fileA = await fs.readFile(path.join(root, 'a', a.sets[0].files.DNA));
    const fileB = await fs.readFile(path.join(root, 'b', b.sets[0].files.DNA));
    const fileC = await fs.readFile(path.join(root, 'c', c.sets[0].files.DNA));
    expect(fileB.equals(fileA)).toBe(true);
    expect(fileC.equals(fileA)).toBe(false);
    const written = JSON.parse(await fs.readFile(path.join(root, 'a', 'ground-truth.json'), 'utf8'));
    expect(written).toEqual(JSON.parse(JSON.stringify(a)));
  });

  it('names files so the grouping rule recovers plate, well, site and channel', async () => {
    const outDir = path.join(root, 'names');
    const truth = await generateSyntheticPlate({ outDir, plate: 'PL7', rows: 2, cols: 2, sites: 2, seed: 3 });
    expect(truth.sets.map((s) => s.key)).toEqual([
      'PL7-A01-s1', 'PL7-A01-s2', 'PL7-A02-s1', 'PL7-A02-s2',
      'PL7-B01-s1', 'PL7-B01-s2', 'PL7-B02-s1', 'PL7-B02-s2',
    ]);
    for (const set of truth.sets) {
      for (const [channel, file] of Object.entries(set.files)) {
        const groups = SYNTHETIC_GROUPING.exec(file)?.groups;
        expect(groups).toEqual({ Plate: 'PL7', Well: set.well, Site: String(set.site), Channel: channel });
        await expect(fs.stat(path.join(outDir, file))).resolves.toBeTruthy();
      }
      expect(Object.keys(set.files).sort()).toEqual(['Actin', 'DNA']);
    }
    expect(SYNTHETIC_GROUPING.test('PL7_A01_s1_wDNA.tif')).toBe(true);
    expect(SYNTHETIC_GROUPING.test('ground-truth.json')).toBe(false);
  });

  it.each([
    [16, 'tif', 'lzw', 'ushort'],
    [16, 'png', 'none', 'ushort'],
    [8, 'tif', 'none', 'uchar'],
    [8, 'png', 'none', 'uchar'],
  ] as const)('writes single-channel %i-bit %s (%s)', async (bitDepth, format, compression, depth) => {
    const outDir = path.join(root, `depth-${bitDepth}-${format}`);
    const truth = await generateSyntheticPlate({ outDir, rows: 1, cols: 1, seed: 5, bitDepth, format, compression });
    for (const file of Object.values(truth.sets[0].files)) {
      const metadata = await sharp(path.join(outDir, file)).metadata();
      expect(metadata.format).toBe(format === 'tif' ? 'tiff' : 'png');
      expect(metadata.channels).toBe(1);
      expect(metadata.depth).toBe(depth);
      expect(metadata.width).toBe(256);
    }
  });

  it('varies nucleus counts across the plate like a dose response', async () => {
    const truth = await generateSyntheticPlate({ outDir: path.join(root, 'dose'), rows: 2, cols: 6, seed: 9 });
    const meanCount = (col: string) => {
      const sets = truth.sets.filter((s) => s.well.endsWith(col));
      return sets.reduce((sum, s) => sum + s.nucleusCount, 0) / sets.length;
    };
    expect(meanCount('06')).toBeGreaterThan(2 * meanCount('01'));
    for (const set of truth.sets) {
      expect(set.nuclei).toHaveLength(set.nucleusCount);
      expect(set.meanNucleusArea).toBeGreaterThan(50);
      expect(set.meanNucleusArea).toBeLessThan(400);
    }
    expect(truth.sets.reduce((sum, s) => sum + s.touchingPairs, 0)).toBeGreaterThan(5);
  });

  it('draws touching pairs as one connected clump and keeps other nuclei apart', async () => {
    const outDir = path.join(root, 'pairs');
    const truth = await generateSyntheticPlate({ outDir, rows: 1, cols: 3, seed: 21, size: 384 });
    let pairsChecked = 0;
    for (const set of truth.sets) {
      const image = await decodeGrayscale(path.join(outDir, set.files.DNA));
      const smoothed = gaussianBlur(image.data, image.width, image.height, 1);
      const threshold = otsuThreshold(image.data);
      const mask = Uint8Array.from(smoothed, (v) => (v >= threshold ? 1 : 0));
      const { labels, count } = labelComponents(mask, image.width, image.height, 8);
      const labelAt = (n: { x: number; y: number }) => labels[Math.round(n.y) * image.width + Math.round(n.x)];
      set.nuclei.forEach((nucleus, i) => {
        expect(labelAt(nucleus)).toBeGreaterThan(0);
        if (nucleus.touches !== undefined && nucleus.touches > i) {
          expect(labelAt(set.nuclei[nucleus.touches])).toBe(labelAt(nucleus));
          pairsChecked++;
        }
      });
      // Without declumping, each pair is one component and everything else is separate.
      expect(count).toBe(set.nucleusCount - set.touchingPairs);
    }
    expect(pairsChecked).toBeGreaterThan(0);
  });
});
