/**
 * Global two-class thresholds on [0,1] intensities. Both operate on a 256-bin histogram spanning the
 * data's [min,max], as scikit-image (which CellProfiler 4 calls) does.
 */

function range(values: ArrayLike<number>): { min: number; max: number } {
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return { min, max };
}

/** Otsu's threshold: the cut between histogram bins that maximises the between-class variance. */
export function otsuThreshold(values: ArrayLike<number>, bins = 256): number {
  if (values.length === 0) return 0;
  const { min, max } = range(values);
  if (max <= min) return min;
  const histogram = new Float64Array(bins);
  const scale = bins / (max - min);
  for (let i = 0; i < values.length; i++) {
    histogram[Math.min(bins - 1, Math.floor((values[i] - min) * scale))]++;
  }
  const binCentre = (b: number) => min + (b + 0.5) / scale;
  let totalWeight = 0;
  let totalSum = 0;
  for (let b = 0; b < bins; b++) {
    totalWeight += histogram[b];
    totalSum += histogram[b] * binCentre(b);
  }
  let weightBelow = 0;
  let sumBelow = 0;
  let bestVariance = -1;
  let bestBin = 0;
  for (let b = 0; b < bins - 1; b++) {
    weightBelow += histogram[b];
    sumBelow += histogram[b] * binCentre(b);
    const weightAbove = totalWeight - weightBelow;
    if (weightBelow === 0 || weightAbove === 0) continue;
    const meanBelow = sumBelow / weightBelow;
    const meanAbove = (totalSum - sumBelow) / weightAbove;
    const variance = weightBelow * weightAbove * (meanBelow - meanAbove) ** 2;
    if (variance > bestVariance) {
      bestVariance = variance;
      bestBin = b;
    }
  }
  // The upper edge of the last background bin, so every value binned as background lies at or below it.
  return min + (bestBin + 1) / scale;
}

/**
 * Li's minimum cross-entropy threshold (CellProfiler's default "Minimum Cross-Entropy"), by Li & Tam's
 * iteration t = (mu_b - mu_f) / (ln mu_b - ln mu_f) until it settles.
 */
export function minimumCrossEntropyThreshold(values: ArrayLike<number>): number {
  if (values.length === 0) return 0;
  const { min, max } = range(values);
  if (max <= min) return min;
  // The logarithms need positive means, so work on values shifted to start at a small positive offset.
  const offset = min;
  const tolerance = (max - min) / 512;
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i] - offset;
  let current = sum / values.length;
  for (let iteration = 0; iteration < 1000; iteration++) {
    let sumFore = 0;
    let countFore = 0;
    let sumBack = 0;
    let countBack = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i] - offset;
      if (v > current) {
        sumFore += v;
        countFore++;
      } else {
        sumBack += v;
        countBack++;
      }
    }
    if (countFore === 0 || countBack === 0) break;
    const meanFore = sumFore / countFore;
    const meanBack = Math.max(sumBack / countBack, tolerance / 1e3);
    const next = (meanBack - meanFore) / (Math.log(meanBack) - Math.log(meanFore));
    if (Math.abs(next - current) < tolerance / 10) {
      current = next;
      break;
    }
    current = next;
  }
  return current + offset;
}
