/**
 * Small, linear-time (or N log N) image operations on row-major Float32/Int32 rasters.
 * Labels: 0 is background, objects are 1..count.
 */

/**
 * Separable Gaussian blur, kernel truncated at `radius` pixels (default 4 sigma). Near the border the
 * kernel is renormalised over the pixels inside the image, which avoids the dark rim a zero-padded
 * blur would give (CellProfiler gets the same effect by dividing by a blurred mask).
 */
export function gaussianBlur(
  data: Float32Array,
  width: number,
  height: number,
  sigma: number,
  radius = Math.max(1, Math.ceil(4 * sigma)),
): Float32Array {
  if (sigma <= 0) return Float32Array.from(data);
  const kernel = new Float64Array(2 * radius + 1);
  for (let k = -radius; k <= radius; k++) kernel[k + radius] = Math.exp(-(k * k) / (2 * sigma * sigma));
  const horizontal = new Float32Array(data.length);
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < width; x++) {
      let sum = 0;
      let weight = 0;
      const from = Math.max(0, x - radius);
      const to = Math.min(width - 1, x + radius);
      for (let xx = from; xx <= to; xx++) {
        const w = kernel[xx - x + radius];
        sum += w * data[row + xx];
        weight += w;
      }
      horizontal[row + x] = sum / weight;
    }
  }
  const out = new Float32Array(data.length);
  for (let y = 0; y < height; y++) {
    const from = Math.max(0, y - radius);
    const to = Math.min(height - 1, y + radius);
    for (let x = 0; x < width; x++) {
      let sum = 0;
      let weight = 0;
      for (let yy = from; yy <= to; yy++) {
        const w = kernel[yy - y + radius];
        sum += w * horizontal[yy * width + x];
        weight += w;
      }
      out[y * width + x] = sum / weight;
    }
  }
  return out;
}

// Neighbour offsets as flat typed arrays: hot loops index them instead of destructuring tuples.
const DX_8 = Int8Array.of(-1, 0, 1, -1, 1, -1, 0, 1);
const DY_8 = Int8Array.of(-1, -1, -1, 0, 0, 1, 1, 1);
const DX_4 = Int8Array.of(0, -1, 1, 0);
const DY_4 = Int8Array.of(-1, 0, 0, 1);

export interface Labelling {
  labels: Int32Array;
  count: number;
}

/** Connected components of the pixels where `mask` is non-zero (8- or 4-connectivity), by flood fill. */
export function labelComponents(
  mask: Uint8Array,
  width: number,
  height: number,
  connectivity: 4 | 8 = 8,
): Labelling {
  const dxs = connectivity === 8 ? DX_8 : DX_4;
  const dys = connectivity === 8 ? DY_8 : DY_4;
  const labels = new Int32Array(mask.length);
  const stack = new Int32Array(mask.length);
  let count = 0;
  for (let start = 0; start < mask.length; start++) {
    if (!mask[start] || labels[start]) continue;
    count++;
    labels[start] = count;
    let top = 0;
    stack[top++] = start;
    while (top > 0) {
      const p = stack[--top];
      const px = p % width;
      const py = (p - px) / width;
      for (let n = 0; n < dxs.length; n++) {
        const nx = px + dxs[n];
        const ny = py + dys[n];
        if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
        const q = ny * width + nx;
        if (mask[q] && !labels[q]) {
          labels[q] = count;
          stack[top++] = q;
        }
      }
    }
  }
  return { labels, count };
}

/**
 * Fills holes inside objects: a background region (4-connected) that does not reach the image border,
 * touches exactly one object and is smaller than `maxHoleArea` becomes part of that object. Holes
 * bordered by two objects stay background, so filling never merges neighbours.
 */
export function fillLabelledHoles(
  labels: Int32Array,
  width: number,
  height: number,
  maxHoleArea = Infinity,
): Int32Array {
  const background = new Uint8Array(labels.length);
  for (let i = 0; i < labels.length; i++) background[i] = labels[i] === 0 ? 1 : 0;
  const holes = labelComponents(background, width, height, 4);
  // Per background region: the single object it touches, or -1 when it touches the border or several.
  const owner = new Int32Array(holes.count + 1);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      const region = holes.labels[p];
      if (!region || owner[region] === -1) continue;
      if (x === 0 || y === 0 || x === width - 1 || y === height - 1) {
        owner[region] = -1;
        continue;
      }
      for (let n = 0; n < 8; n++) {
        const object = labels[(y + DY_8[n]) * width + x + DX_8[n]];
        if (!object) continue;
        if (owner[region] === 0) owner[region] = object;
        else if (owner[region] !== object) {
          owner[region] = -1;
          break;
        }
      }
    }
  }
  if (Number.isFinite(maxHoleArea)) {
    const holeArea = new Float64Array(holes.count + 1);
    for (let p = 0; p < labels.length; p++) holeArea[holes.labels[p]]++;
    for (let region = 1; region <= holes.count; region++) if (holeArea[region] >= maxHoleArea) owner[region] = -1;
  }
  const out = Int32Array.from(labels);
  for (let p = 0; p < out.length; p++) {
    const region = holes.labels[p];
    if (region && owner[region] > 0) out[p] = owner[region];
  }
  return out;
}

/**
 * Seeds for declumping: pixels that are the maximum of `intensity` within a disc of `radius` among
 * pixels of the same object, and above zero. Touching maxima (plateaus) collapse to one seed.
 * Returns a seed raster labelled 1..count.
 */
export function findSeeds(
  intensity: Float32Array,
  objects: Int32Array,
  width: number,
  height: number,
  radius: number,
): Labelling {
  const r = Math.max(1, Math.floor(radius));
  const offsetX: number[] = [];
  const offsetY: number[] = [];
  for (let dy = -r; dy <= r; dy++) {
    for (let dx = -r; dx <= r; dx++) {
      if ((dx !== 0 || dy !== 0) && dx * dx + dy * dy <= radius * radius) {
        offsetX.push(dx);
        offsetY.push(dy);
      }
    }
  }
  const discX = Int32Array.from(offsetX);
  const discY = Int32Array.from(offsetY);
  const isMaximum = new Uint8Array(intensity.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      const object = objects[p];
      if (!object) continue;
      const value = intensity[p];
      if (value <= 0) continue;
      let maximal = true;
      for (let k = 0; k < discX.length; k++) {
        const nx = x + discX[k];
        const ny = y + discY[k];
        if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
        const q = ny * width + nx;
        if (objects[q] === object && intensity[q] > value) {
          maximal = false;
          break;
        }
      }
      if (maximal) isMaximum[p] = 1;
    }
  }
  return labelComponents(isMaximum, width, height, 8);
}

/**
 * Seeded watershed restricted to `mask`: regions grow from the seeds through 8-connected neighbours,
 * brightest pixels first (a priority flood on descending `intensity`), so touching nuclei meet at the
 * dim valley between them. Pixels unreachable from any seed stay 0.
 */
export function seededWatershed(
  intensity: Float32Array,
  seeds: Int32Array,
  mask: Uint8Array,
  width: number,
  height: number,
): Int32Array {
  const labels = new Int32Array(seeds.length);
  const queue = new PixelHeap(seeds.length);
  for (let p = 0; p < seeds.length; p++) {
    if (seeds[p] && mask[p]) {
      labels[p] = seeds[p];
      queue.push(p, -intensity[p]);
    }
  }
  while (queue.size > 0) {
    const p = queue.pop();
    const px = p % width;
    const py = (p - px) / width;
    for (let n = 0; n < 8; n++) {
      const nx = px + DX_8[n];
      const ny = py + DY_8[n];
      if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
      const q = ny * width + nx;
      if (!mask[q] || labels[q]) continue;
      labels[q] = labels[p];
      queue.push(q, -intensity[q]);
    }
  }
  return labels;
}

/** Binary min-heap of pixel indices by priority; ties break by insertion order for determinism. */
class PixelHeap {
  private readonly pixel: Int32Array;
  private readonly priority: Float64Array;
  private readonly order: Float64Array;
  private counter = 0;
  size = 0;

  constructor(capacity: number) {
    this.pixel = new Int32Array(capacity);
    this.priority = new Float64Array(capacity);
    this.order = new Float64Array(capacity);
  }

  push(pixel: number, priority: number): void {
    let i = this.size++;
    const order = this.counter++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(priority, order, this.priority[parent], this.order[parent])) break;
      this.move(parent, i);
      i = parent;
    }
    this.pixel[i] = pixel;
    this.priority[i] = priority;
    this.order[i] = order;
  }

  pop(): number {
    const top = this.pixel[0];
    const last = --this.size;
    const pixel = this.pixel[last];
    const priority = this.priority[last];
    const order = this.order[last];
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= last) break;
      if (child + 1 < last && this.before(this.priority[child + 1], this.order[child + 1], this.priority[child], this.order[child])) {
        child++;
      }
      if (!this.before(this.priority[child], this.order[child], priority, order)) break;
      this.move(child, i);
      i = child;
    }
    this.pixel[i] = pixel;
    this.priority[i] = priority;
    this.order[i] = order;
    return top;
  }

  private before(priorityA: number, orderA: number, priorityB: number, orderB: number): boolean {
    return priorityA < priorityB || (priorityA === priorityB && orderA < orderB);
  }

  private move(from: number, to: number): void {
    this.pixel[to] = this.pixel[from];
    this.priority[to] = this.priority[from];
    this.order[to] = this.order[from];
  }
}
