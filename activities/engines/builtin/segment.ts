import type { GrayscaleImage } from './decode';
import { fillLabelledHoles, findSeeds, gaussianBlur, labelComponents, seededWatershed } from './imageops';
import { minimumCrossEntropyThreshold, otsuThreshold } from './threshold';

export type ThresholdMethod = 'otsu' | 'minimumCrossEntropy';

export interface SegmentationOptions {
  /** Objects with a smaller equivalent diameter (px) are discarded; also sets the declumping scale. */
  minDiameter: number;
  /** Objects with a larger equivalent diameter (px) are discarded. */
  maxDiameter: number;
  thresholdMethod: ThresholdMethod;
  /**
   * Gaussian sigma applied before comparing with the threshold. CellProfiler's default threshold
   * smoothing scale 1.3488 corresponds to sigma = 1.3488 / 0.6744 / 2 = 1.
   */
  thresholdSmoothingSigma: number;
  /** Discard objects with any pixel on the image edge (CellProfiler's default). */
  discardBorderObjects: boolean;
}

export const DEFAULT_SEGMENTATION_OPTIONS: SegmentationOptions = {
  minDiameter: 8,
  maxDiameter: 80,
  // CellProfiler's default method; on ExampleHuman it lands within 1% of CellProfiler's threshold and
  // object sizes, where Otsu's higher threshold trims nuclei by about a quarter of their area.
  thresholdMethod: 'minimumCrossEntropy',
  thresholdSmoothingSigma: 1,
  discardBorderObjects: true,
};

export interface Segmentation {
  /** Object label per pixel, 0 = background, objects numbered 1..count in raster order. */
  labels: Int32Array;
  count: number;
  /** The global threshold applied, on the image's [0,1] scale. */
  threshold: number;
}

/**
 * Identifies nuclei the way CellProfiler's IdentifyPrimaryObjects does with its basic (automatic)
 * settings: global threshold on the lightly smoothed image → fill holes → 8-connected components →
 * intensity-based declumping (seeds are local maxima of a smoothed image, at least ~min diameter / 1.5
 * apart within one clump; a seeded watershed on the unsmoothed intensities splits the clump) → drop
 * objects on the border and outside the diameter range → fill holes again.
 */
export function segmentNuclei(image: GrayscaleImage, options: Partial<SegmentationOptions> = {}): Segmentation {
  const settings: SegmentationOptions = { ...DEFAULT_SEGMENTATION_OPTIONS, ...options };
  const { width, height, data } = image;

  const threshold =
    settings.thresholdMethod === 'otsu' ? otsuThreshold(data) : minimumCrossEntropyThreshold(data);
  const smoothed = gaussianBlur(data, width, height, settings.thresholdSmoothingSigma);
  const binary = new Int32Array(data.length);
  for (let i = 0; i < data.length; i++) binary[i] = smoothed[i] >= threshold ? 1 : 0;
  // Holes smaller than max diameter squared are filled before labelling, as CellProfiler does.
  const filledBinary = fillLabelledHoles(binary, width, height, settings.maxDiameter ** 2);
  const foreground = Uint8Array.from(filledBinary);
  const clumps = labelComponents(foreground, width, height, 8);

  // Declumping scale follows CellProfiler's automatic choices: a smoothing filter of size
  // 2.35 * min / 3.5, i.e. sigma = min / 3.5, whose kernel is cut off at half the filter size (so it
  // smooths noise but keeps neighbouring peaks), and a maxima suppression distance of min / 1.5, used
  // as a disc of radius distance - 0.5.
  const filterSize = (2.35 * settings.minDiameter) / 3.5;
  const forMaxima = gaussianBlur(data, width, height, filterSize / 2.35, Math.max(1, Math.floor(filterSize / 2)));
  const suppressionRadius = Math.max(1, settings.minDiameter / 1.5 - 0.5);
  const seeds = findSeeds(forMaxima, clumps.labels, width, height, suppressionRadius);
  const split = seededWatershed(data, seeds.labels, foreground, width, height);

  const kept = filterObjects(split, seeds.count, width, height, settings);
  // Filling after the filters, like CellProfiler, so a hole never rescues an undersized object.
  const labels = fillLabelledHoles(kept.labels, width, height);
  return { labels, count: kept.count, threshold };
}

function filterObjects(
  labels: Int32Array,
  maxLabel: number,
  width: number,
  height: number,
  settings: SegmentationOptions,
): { labels: Int32Array; count: number } {
  const area = new Float64Array(maxLabel + 1);
  const touchesBorder = new Uint8Array(maxLabel + 1);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const label = labels[y * width + x];
      if (!label) continue;
      area[label]++;
      if (x === 0 || y === 0 || x === width - 1 || y === height - 1) touchesBorder[label] = 1;
    }
  }
  const minArea = (Math.PI * settings.minDiameter ** 2) / 4;
  const maxArea = (Math.PI * settings.maxDiameter ** 2) / 4;
  // Renumber the survivors 1..count in raster order of their first pixel.
  const renumber = new Int32Array(maxLabel + 1).fill(-1);
  const out = new Int32Array(labels.length);
  let count = 0;
  for (let p = 0; p < labels.length; p++) {
    const label = labels[p];
    if (!label) continue;
    if (renumber[label] === -1) {
      const keep =
        area[label] >= minArea &&
        area[label] <= maxArea &&
        !(settings.discardBorderObjects && touchesBorder[label]);
      renumber[label] = keep ? ++count : 0;
    }
    out[p] = renumber[label];
  }
  return { labels: out, count };
}
