/**
 * Deterministic synthetic microscopy plate for the demo, the end-to-end test and the benchmark:
 * two channels per site, `DNA` (nuclei: bright textured ellipses of varied size, some in touching
 * pairs, on a noisy, unevenly lit background) and `Actin` (a diffuse cytoplasm-like glow around each
 * nucleus). The nucleus count rises across the plate's columns like a dose response, so a plate
 * heatmap of `Count_Nuclei` shows structure. Everything follows from `seed`.
 */
import { promises as fs } from 'fs';
import path from 'path';
import sharp, { type Sharp } from 'sharp';
import { seededRandom } from '../activities/reduce/reservoir';

export interface SyntheticPlateOptions {
  outDir: string;
  /** Plate name, part of every file name; default `P1`. Must not contain `_`. */
  plate?: string;
  /** Plate rows (A, B, …), 1–16; default 2. */
  rows?: number;
  /** Plate columns (01, 02, …), 1–24; default 3. */
  cols?: number;
  /** Sites (fields of view) per well; default 1. */
  sites?: number;
  seed?: number;
  /** Image width and height in pixels; default 256. */
  size?: number;
  bitDepth?: 8 | 16;
  format?: 'tif' | 'png';
  /** TIFF compression (PNG is always deflated); default `none`. */
  compression?: 'none' | 'lzw' | 'deflate' | 'packbits';
}

export interface SyntheticNucleus {
  /** Centre, in pixels (0-based, x = column). */
  x: number;
  y: number;
  /** Pixels this nucleus owns in the rendered DNA image (the brighter nucleus wins shared pixels). */
  area: number;
  /** Index into the set's `nuclei` of the partner this nucleus touches, if it is part of a pair. */
  touches?: number;
}

export interface SyntheticSet {
  /** `<plate>-<well>-s<site>`, e.g. `P1-A01-s1`. */
  key: string;
  plate: string;
  well: string;
  site: number;
  nucleusCount: number;
  touchingPairs: number;
  meanNucleusArea: number;
  /** Channel name → file path relative to `outDir`. */
  files: Record<string, string>;
  nuclei: SyntheticNucleus[];
}

export interface GroundTruth {
  size: number;
  bitDepth: 8 | 16;
  format: 'tif' | 'png';
  channels: string[];
  sets: SyntheticSet[];
}

/** Grouping rule for the generated file names (named groups give the image set's metadata). */
export const SYNTHETIC_GROUPING =
  /(?<Plate>[^_]+)_(?<Well>[A-P]\d{2})_s(?<Site>\d+)_w(?<Channel>[A-Za-z0-9]+)\.(tif|png)/;

export const SYNTHETIC_CHANNELS = ['DNA', 'Actin'] as const;

export async function generateSyntheticPlate(options: SyntheticPlateOptions): Promise<GroundTruth> {
  const plate = options.plate ?? 'P1';
  const rows = options.rows ?? 2;
  const cols = options.cols ?? 3;
  const sites = options.sites ?? 1;
  const size = options.size ?? 256;
  const bitDepth = options.bitDepth ?? 16;
  const format = options.format ?? 'tif';
  const compression = options.compression ?? 'none';
  const seed = options.seed ?? 1;
  if (!/^[A-Za-z0-9-]+$/.test(plate)) throw new RangeError(`plate name ${plate} must be letters, digits or '-'`);
  if (!Number.isInteger(rows) || rows < 1 || rows > 16) throw new RangeError(`rows must be 1–16, got ${rows}`);
  if (!Number.isInteger(cols) || cols < 1 || cols > 24) throw new RangeError(`cols must be 1–24, got ${cols}`);
  if (!Number.isInteger(sites) || sites < 1) throw new RangeError(`sites must be a positive integer, got ${sites}`);
  if (!Number.isInteger(size) || size < 64) throw new RangeError(`size must be an integer >= 64, got ${size}`);

  await fs.mkdir(options.outDir, { recursive: true });
  const random = seededRandom(seed);
  const sets: SyntheticSet[] = [];
  for (let row = 0; row < rows; row++) {
    for (let col = 0; col < cols; col++) {
      const well = `${String.fromCharCode(65 + row)}${String(col + 1).padStart(2, '0')}`;
      for (let site = 1; site <= sites; site++) {
        // Dose-like gradient over columns plus a small row effect, scaled with the field's area.
        const dose = cols > 1 ? col / (cols - 1) : 0.5;
        const areaScale = (size / 256) ** 2;
        const wanted = Math.round((8 + 26 * dose + 2 * (row % 2)) * areaScale + (random() * 4 - 2));
        const field = renderField(size, Math.max(1, wanted), random);
        const files: Record<string, string> = {};
        for (const channel of SYNTHETIC_CHANNELS) {
          const fileName = `${plate}_${well}_s${site}_w${channel}.${format}`;
          await writeGrayscale(path.join(options.outDir, fileName), field[channel], size, bitDepth, format, compression);
          files[channel] = fileName;
        }
        const touchingPairs = field.nuclei.filter((n, i) => n.touches !== undefined && n.touches > i).length;
        sets.push({
          key: `${plate}-${well}-s${site}`,
          plate,
          well,
          site,
          nucleusCount: field.nuclei.length,
          touchingPairs,
          meanNucleusArea: field.nuclei.reduce((sum, n) => sum + n.area, 0) / field.nuclei.length,
          files,
          nuclei: field.nuclei,
        });
      }
    }
  }
  const truth: GroundTruth = { size, bitDepth, format, channels: [...SYNTHETIC_CHANNELS], sets };
  await fs.writeFile(path.join(options.outDir, 'ground-truth.json'), `${JSON.stringify(truth, null, 2)}\n`);
  return truth;
}

interface Ellipse {
  x: number;
  y: number;
  /** Semi-axes (px) and orientation (radians). */
  a: number;
  b: number;
  angle: number;
  brightness: number;
}

interface Field {
  DNA: Float32Array;
  Actin: Float32Array;
  nuclei: SyntheticNucleus[];
}

/** Places about `wanted` nuclei (roughly one in five in a touching pair) and renders both channels. */
function renderField(size: number, wanted: number, random: () => number): Field {
  const ellipses: Ellipse[] = [];
  const partner: Array<number | undefined> = [];
  const margin = 16;
  const makeEllipse = (x: number, y: number): Ellipse => {
    const a = 6 + random() * 5;
    return { x, y, a, b: a * (0.7 + random() * 0.3), angle: random() * Math.PI, brightness: 0.35 + random() * 0.35 };
  };
  const outerRadius = (e: Ellipse) => Math.max(e.a, e.b);
  // Free nuclei keep a clear gap (>= 6 px) from every other nucleus so that only pairs touch.
  const fits = (e: Ellipse, ignore = -1) =>
    e.x - outerRadius(e) >= margin &&
    e.y - outerRadius(e) >= margin &&
    e.x + outerRadius(e) <= size - 1 - margin &&
    e.y + outerRadius(e) <= size - 1 - margin &&
    ellipses.every((o, i) => i === ignore || Math.hypot(o.x - e.x, o.y - e.y) >= outerRadius(o) + outerRadius(e) + 6);

  for (let attempt = 0; attempt < wanted * 200 && ellipses.length < wanted; attempt++) {
    const first = makeEllipse(margin + random() * (size - 2 * margin), margin + random() * (size - 2 * margin));
    if (!fits(first)) continue;
    const wantPair = ellipses.length + 2 <= wanted && random() < 0.2;
    if (!wantPair) {
      ellipses.push(first);
      partner.push(undefined);
      continue;
    }
    // The partner overlaps the first nucleus a little: centres 90% of the sum of the radii along
    // the line joining them apart, so the two form one clump with a dimmer neck.
    // Pairs model daughter nuclei after division: similar size and brightness. (A small, dim nucleus
    // against a big bright one has no intensity peak of its own once smoothed, which no intensity-based
    // declumping, CellProfiler's included, separates; that is not what this fixture measures.)
    const second = makeEllipse(0, 0);
    const sizeRatio = 0.9 + random() * 0.2;
    second.a = first.a * sizeRatio;
    second.b = first.b * sizeRatio;
    second.brightness = first.brightness * (0.9 + random() * 0.2);
    const direction = random() * 2 * Math.PI;
    const distance = 0.9 * (radiusAlong(first, direction) + radiusAlong(second, direction + Math.PI));
    second.x = first.x + distance * Math.cos(direction);
    second.y = first.y + distance * Math.sin(direction);
    if (!fits(second)) continue;
    const i = ellipses.length;
    ellipses.push(first, second);
    partner.push(i + 1, i);
  }

  const pixels = size * size;
  const dna = new Float32Array(pixels);
  const actin = new Float32Array(pixels);
  const owner = new Int32Array(pixels).fill(-1);
  // Uneven illumination: a gentle diagonal ramp on the background.
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const ramp = 0.03 * ((x + y) / (2 * size));
      dna[y * size + x] = 0.04 + ramp;
      actin[y * size + x] = 0.05 + ramp;
    }
  }
  ellipses.forEach((e, index) => {
    const reach = Math.ceil(outerRadius(e) * 2.5);
    const cos = Math.cos(e.angle);
    const sin = Math.sin(e.angle);
    for (let y = Math.max(0, Math.floor(e.y - reach)); y <= Math.min(size - 1, Math.ceil(e.y + reach)); y++) {
      for (let x = Math.max(0, Math.floor(e.x - reach)); x <= Math.min(size - 1, Math.ceil(e.x + reach)); x++) {
        const dx = x - e.x;
        const dy = y - e.y;
        const u = (dx * cos + dy * sin) / e.a;
        const v = (-dx * sin + dy * cos) / e.b;
        const r2 = u * u + v * v;
        const p = y * size + x;
        // Actin: diffuse glow around the nucleus, wider than it.
        actin[p] += 0.12 * e.brightness * Math.exp(-r2 / (2 * 1.6 * 1.6));
        if (r2 > 1) continue;
        // Dome profile (brightest at the centre) with a little chromatin texture.
        const texture = 1 + 0.12 * Math.sin(x * 0.9 + index) * Math.sin(y * 1.1 - index);
        const value = 0.04 + e.brightness * (0.55 + 0.45 * (1 - r2)) * texture;
        if (owner[p] === -1 || value > dna[p]) {
          dna[p] = value;
          owner[p] = index;
        }
      }
    }
  });
  for (let p = 0; p < pixels; p++) {
    dna[p] = clamp01(dna[p] + 0.01 * gaussian(random));
    actin[p] = clamp01(actin[p] + 0.01 * gaussian(random));
  }
  const areas = new Array<number>(ellipses.length).fill(0);
  for (let p = 0; p < pixels; p++) if (owner[p] >= 0) areas[owner[p]]++;
  const nuclei = ellipses.map((e, i): SyntheticNucleus => {
    const nucleus: SyntheticNucleus = { x: round2(e.x), y: round2(e.y), area: areas[i] };
    if (partner[i] !== undefined) nucleus.touches = partner[i];
    return nucleus;
  });
  return { DNA: dna, Actin: actin, nuclei };
}

/** Distance from an ellipse's centre to its outline in the direction `theta`. */
function radiusAlong(e: Ellipse, theta: number): number {
  const phi = theta - e.angle;
  return (e.a * e.b) / Math.hypot(e.b * Math.cos(phi), e.a * Math.sin(phi));
}

async function writeGrayscale(
  filePath: string,
  values: Float32Array,
  size: number,
  bitDepth: 8 | 16,
  format: 'tif' | 'png',
  compression: 'none' | 'lzw' | 'deflate' | 'packbits',
): Promise<void> {
  // Typed-array input tells sharp the sample depth; the colourspace keeps it single-channel on output.
  let image: Sharp;
  if (bitDepth === 16) {
    const samples = new Uint16Array(values.length);
    for (let i = 0; i < values.length; i++) samples[i] = Math.round(values[i] * 65535);
    image = sharp(samples, { raw: { width: size, height: size, channels: 1 } }).toColourspace('grey16');
  } else {
    const samples = new Uint8Array(values.length);
    for (let i = 0; i < values.length; i++) samples[i] = Math.round(values[i] * 255);
    image = sharp(samples, { raw: { width: size, height: size, channels: 1 } }).toColourspace('b-w');
  }
  const encoded = format === 'png' ? image.png() : image.tiff({ compression });
  await encoded.toFile(filePath);
}

/** Standard normal sample by the Box–Muller transform. */
function gaussian(random: () => number): number {
  const u = 1 - random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
}

function clamp01(value: number): number {
  return value < 0 ? 0 : value > 1 ? 1 : value;
}

function round2(value: number): number {
  return Math.round(value * 100) / 100;
}
