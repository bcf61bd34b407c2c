import { promises as fs } from 'fs';
import os from 'os';
import path from 'path';
import { parse } from 'csv-parse/sync';
import {
  builtinOptionsFromPipeline,
  decodeGrayscale,
  fillLabelledHoles,
  measureObjects,
  minimumCrossEntropyThreshold,
  otsuThreshold,
  segmentNuclei,
  type GrayscaleImage,
} from '../../activities/engines/builtin';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import { EXAMPLE_HUMAN } from '../support/fixtures';

// Image generation and segmentation share two cores with other suites; allow for a slow machine.
jest.setTimeout(60_000);

/** Deterministic pseudo-random numbers for test images (no Math.random, so failures reproduce). */
function lcg(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
}

/** Background around 0.05 with a little noise, as in real images. */
function blankImage(width: number, height: number): GrayscaleImage {
  const random = lcg(width * 1000 + height);
  const data = Float32Array.from({ length: width * height }, () => 0.04 + 0.02 * random());
  return { width, height, data, bitDepth: 16 };
}

function paintDisc(image: GrayscaleImage, cx: number, cy: number, radius: number, peak: number): void {
  for (let y = 0; y < image.height; y++) {
    for (let x = 0; x < image.width; x++) {
      const r2 = ((x - cx) ** 2 + (y - cy) ** 2) / radius ** 2;
      if (r2 <= 1) image.data[y * image.width + x] = Math.max(image.data[y * image.width + x], peak * (0.6 + 0.4 * (1 - r2)));
    }
  }
}

describe('thresholds', () => {
  const random = lcg(4);
  // Bimodal: 80% background around 0.1, 20% foreground around 0.6.
  const values = Float32Array.from({ length: 20000 }, (_, i) => (i % 5 === 0 ? 0.6 : 0.1) + 0.04 * (random() - 0.5));

  // Background values lie in [0.08, 0.12], foreground in [0.58, 0.62].
  it('Otsu separates two well-separated modes', () => {
    const t = otsuThreshold(values);
    expect(t).toBeGreaterThanOrEqual(0.12);
    expect(t).toBeLessThan(0.58);
  });

  it('minimum cross-entropy separates them too and handles a flat image', () => {
    const t = minimumCrossEntropyThreshold(values);
    expect(t).toBeGreaterThanOrEqual(0.12);
    expect(t).toBeLessThan(0.58);
    expect(minimumCrossEntropyThreshold(new Float32Array(10).fill(0.3))).toBeCloseTo(0.3, 6);
    expect(otsuThreshold(new Float32Array(10).fill(0.3))).toBeCloseTo(0.3, 6);
  });
});

describe('segmentNuclei on hand-made images', () => {
  it('splits two touching discs, drops border and undersized objects, keeps isolated ones', () => {
    const image = blankImage(120, 80);
    paintDisc(image, 30, 40, 9, 0.8); // touching pair: centres 16 px apart, radii 9 → overlap
    paintDisc(image, 46, 40, 9, 0.75);
    paintDisc(image, 90, 40, 8, 0.7); // isolated
    paintDisc(image, 2, 5, 6, 0.8); // touches the border
    paintDisc(image, 100, 12, 1.5, 0.8); // equivalent diameter ~3 px < 8
    const result = segmentNuclei(image);
    expect(result.count).toBe(3);
    const at = (x: number, y: number) => result.labels[y * image.width + x];
    expect(at(30, 40)).toBeGreaterThan(0);
    expect(at(46, 40)).toBeGreaterThan(0);
    expect(at(30, 40)).not.toBe(at(46, 40));
    expect(at(90, 40)).toBeGreaterThan(0);
    expect(at(2, 5)).toBe(0);
    expect(at(100, 12)).toBe(0);
    expect(result.threshold).toBeGreaterThan(0.05);
    expect(result.threshold).toBeLessThan(0.45);
  });

  it('respects the maximum diameter', () => {
    const image = blankImage(100, 100);
    paintDisc(image, 50, 50, 20, 0.8); // equivalent diameter ~40
    expect(segmentNuclei(image, { maxDiameter: 80 }).count).toBe(1);
    expect(segmentNuclei(image, { maxDiameter: 30 }).count).toBe(0);
  });

  it('fills holes enclosed by one object but not gaps between two', () => {
    const width = 9;
    const labels = new Int32Array(width * 5);
    // Object 1: a ring around (2,2); objects 2 and 3 enclose the pixel (6,2) together.
    for (const [x, y] of [[1, 1], [2, 1], [3, 1], [1, 2], [3, 2], [1, 3], [2, 3], [3, 3]]) labels[y * width + x] = 1;
    for (const [x, y] of [[5, 1], [6, 1], [5, 2], [5, 3], [6, 3]]) labels[y * width + x] = 2;
    for (const [x, y] of [[7, 1], [7, 2], [7, 3]]) labels[y * width + x] = 3;
    const filled = fillLabelledHoles(labels, width, 5);
    expect(filled[2 * width + 2]).toBe(1);
    expect(filled[2 * width + 6]).toBe(0);
    expect(filled[0]).toBe(0);
  });
});

describe('measureObjects', () => {
  it('matches hand-computed area, centroid, bounding box and intensities', () => {
    const width = 6;
    const height = 4;
    const labels = new Int32Array(width * height);
    // Object 1: 3x2 rectangle at x 1..3, y 1..2. Object 2: single pixel at (5,0).
    for (let y = 1; y <= 2; y++) for (let x = 1; x <= 3; x++) labels[y * width + x] = 1;
    labels[5] = 2;
    const dna = Float32Array.from({ length: width * height }, (_, i) => i / 100);
    const other = new Float32Array(width * height).fill(0.5);
    const rows = measureObjects(labels, 2, width, height, [
      { name: 'DNA', data: dna },
      { name: 'Actin', data: other },
    ]);
    expect(rows).toHaveLength(2);
    const [first, second] = rows;
    expect(first.AreaShape_Area).toBe(6);
    expect(first.AreaShape_Center_X).toBeCloseTo(2, 10);
    expect(first.AreaShape_Center_Y).toBeCloseTo(1.5, 10);
    expect(first.Location_Center_X).toBeCloseTo(2, 10);
    expect(first.Location_Center_Y).toBeCloseTo(1.5, 10);
    expect([first.AreaShape_BoundingBoxMinimum_X, first.AreaShape_BoundingBoxMinimum_Y]).toEqual([1, 1]);
    expect([first.AreaShape_BoundingBoxMaximum_X, first.AreaShape_BoundingBoxMaximum_Y]).toEqual([4, 3]);
    expect(first.AreaShape_EquivalentDiameter).toBeCloseTo(Math.sqrt(24 / Math.PI), 10);
    // DNA values of the rectangle: indices 7,8,9,13,14,15 → /100.
    expect(first.Intensity_IntegratedIntensity_DNA).toBeCloseTo(0.66, 5);
    expect(first.Intensity_MeanIntensity_DNA).toBeCloseTo(0.11, 5);
    expect(first.Intensity_MaxIntensity_DNA).toBeCloseTo(0.15, 5);
    expect(first.Intensity_MeanIntensity_Actin).toBeCloseTo(0.5, 6);
    expect(first.Intensity_IntegratedIntensity_Actin).toBeCloseTo(3, 5);
    expect(second.AreaShape_Area).toBe(1);
    expect(second.Intensity_MaxIntensity_DNA).toBeCloseTo(0.05, 6);
    expect([second.AreaShape_BoundingBoxMaximum_X, second.AreaShape_BoundingBoxMaximum_Y]).toEqual([6, 1]);
  });
});

describe('segmentNuclei on the synthetic plate', () => {
  let root: string;
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'cpflow-segment-'));
  });
  afterAll(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  it('counts nuclei as the ground truth says and splits touching pairs', async () => {
    const truth = await generateSyntheticPlate({ outDir: root, rows: 2, cols: 4, size: 384, seed: 2024 });
    let totalTruth = 0;
    let totalFound = 0;
    let pairs = 0;
    let pairsSplit = 0;
    for (const set of truth.sets) {
      const image = await decodeGrayscale(path.join(root, set.files.DNA));
      const result = segmentNuclei(image);
      totalTruth += set.nucleusCount;
      totalFound += result.count;
      // Stated tolerance: at most one nucleus off per field (measured: exact in every field).
      expect(Math.abs(result.count - set.nucleusCount)).toBeLessThanOrEqual(1);
      // Object sizes track the drawn ellipses: within 10% (measured: within 5%).
      const rows = measureObjects(result.labels, result.count, image.width, image.height, [{ name: 'DNA', data: image.data }]);
      const meanArea = rows.reduce((sum, row) => sum + row.AreaShape_Area, 0) / rows.length;
      expect(Math.abs(meanArea - set.meanNucleusArea) / set.meanNucleusArea).toBeLessThan(0.1);
      const labelAt = (n: { x: number; y: number }) => result.labels[Math.round(n.y) * image.width + Math.round(n.x)];
      set.nuclei.forEach((nucleus, i) => {
        if (nucleus.touches === undefined || nucleus.touches < i) return;
        pairs++;
        const a = labelAt(nucleus);
        const b = labelAt(set.nuclei[nucleus.touches]);
        if (a > 0 && b > 0 && a !== b) pairsSplit++;
      });
    }
    expect(pairs).toBeGreaterThanOrEqual(10);
    // At least 95% of touching pairs split and the plate total within 1% (measured: all split, exact).
    expect(pairsSplit / pairs).toBeGreaterThanOrEqual(0.95);
    expect(Math.abs(totalFound - totalTruth) / totalTruth).toBeLessThanOrEqual(0.01);
  }, 60_000);
});


const describeExampleHuman = describe;

describeExampleHuman('ExampleHuman (CellProfiler 4.0.6 counted 289 nuclei)', () => {
  it('reads the nuclei settings from the pipeline', async () => {
    const options = builtinOptionsFromPipeline(await fs.readFile(path.join(EXAMPLE_HUMAN, 'ExampleHuman.cppipe'), 'utf8'));
    expect(options).toEqual({
      nucleiChannel: 'DNA',
      objectName: 'Nuclei',
      minDiameter: 8,
      maxDiameter: 80,
      thresholdMethod: 'minimumCrossEntropy',
    });
  });

  it('counts within 2% of CellProfiler, object for object, with a similar threshold and size', async () => {
    const options = builtinOptionsFromPipeline(await fs.readFile(path.join(EXAMPLE_HUMAN, 'ExampleHuman.cppipe'), 'utf8'));
    const image = await decodeGrayscale(path.join(EXAMPLE_HUMAN, 'images', 'AS_09125_050116030001_D03f00d0.tif'));
    const result = segmentNuclei(image, options);
    // Measured: 290 nuclei (CellProfiler 4.0.6: 289), threshold 0.0994 (CellProfiler: 0.0986).
    expect(result.count).toBeGreaterThanOrEqual(283);
    expect(result.count).toBeLessThanOrEqual(295);
    expect(Math.abs(result.threshold - 0.09860165) / 0.09860165).toBeLessThan(0.03);

    const reference: Array<Record<string, string>> = parse(
      await fs.readFile(path.join(EXAMPLE_HUMAN, 'reference-output', 'Nuclei.csv')),
      { columns: true },
    );
    // Object for object: CellProfiler's nucleus centres fall in distinct objects of ours (none missed,
    // none merged). Measured: all 289 matched one-to-one.
    const labelsAtReferenceCentres = reference.map(
      (row) => result.labels[Math.round(Number(row.Location_Center_Y)) * image.width + Math.round(Number(row.Location_Center_X))],
    );
    const matched = new Set(labelsAtReferenceCentres.filter((label) => label > 0));
    expect(matched.size / reference.length).toBeGreaterThanOrEqual(0.98);

    const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
    const referenceArea = median(reference.map((row) => Number(row.AreaShape_Area)));
    const ours = measureObjects(result.labels, result.count, image.width, image.height, [{ name: 'DNA', data: image.data }]);
    const ourArea = median(ours.map((row) => row.AreaShape_Area));
    expect(Math.abs(ourArea - referenceArea) / referenceArea).toBeLessThan(0.1);
    const referenceIntensity = median(reference.map((row) => Number(row.Intensity_MeanIntensity_DNA)));
    const ourIntensity = median(ours.map((row) => row.Intensity_MeanIntensity_DNA));
    expect(Math.abs(ourIntensity - referenceIntensity) / referenceIntensity).toBeLessThan(0.1);
  }, 30_000);
});
