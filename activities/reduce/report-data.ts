/**
 * What the report keeps of each image set while the reduce streams through them, in memory that does
 * not grow with the number of sets: the per-set bar chart as at most `maxBars` bars of consecutive
 * sets (the block size doubles when the bars would overflow), and per-well count sums for the plate
 * heatmaps (bounded by the wells of the plates, not by the sets).
 */

export interface CountSum {
  sum: number;
  /** Sets that had a count for this object. */
  n: number;
}

export interface CountBar {
  /** Keys of the first and last set in the bar (the same for a bar of one set). */
  first: string;
  last: string;
  /** Done sets in the bar. */
  sets: number;
  /** Object name → sum and number of counts over the bar's sets. */
  counts: Record<string, CountSum>;
}

export interface WellCounts {
  plate: string;
  well: string;
  /** Object name → sum and number of done sites with a count. */
  counts: Record<string, CountSum>;
}

function addCounts(into: Record<string, CountSum>, counts: Record<string, number>): void {
  for (const [object, value] of Object.entries(counts)) {
    const c = (into[object] ??= { sum: 0, n: 0 });
    c.sum += value;
    c.n += 1;
  }
}

/** Bars of consecutive done sets, in the order the sets arrive (image set order). */
export class CountBars {
  private blockSize = 1;
  private readonly bars: CountBar[] = [];

  constructor(private readonly maxBars: number) {
    if (!Number.isInteger(maxBars) || maxBars < 2) throw new RangeError(`maxBars must be an integer ≥ 2, got ${maxBars}`);
  }

  add(key: string, counts: Record<string, number>): void {
    let bar = this.bars[this.bars.length - 1];
    if (!bar || bar.sets >= this.blockSize) {
      if (this.bars.length >= this.maxBars) {
        this.mergePairs();
        bar = this.bars[this.bars.length - 1];
      }
      if (!bar || bar.sets >= this.blockSize) {
        bar = { first: key, last: key, sets: 0, counts: {} };
        this.bars.push(bar);
      }
    }
    bar.last = key;
    bar.sets += 1;
    addCounts(bar.counts, counts);
  }

  /** Halve the number of bars: each new bar is two neighbours, and later bars hold twice as many sets. */
  private mergePairs(): void {
    const merged: CountBar[] = [];
    for (let i = 0; i < this.bars.length; i += 2) {
      const a = this.bars[i]!;
      const b = this.bars[i + 1];
      if (!b) {
        merged.push(a);
        continue;
      }
      const counts: Record<string, CountSum> = {};
      for (const source of [a.counts, b.counts]) {
        for (const [object, c] of Object.entries(source)) {
          const into = (counts[object] ??= { sum: 0, n: 0 });
          into.sum += c.sum;
          into.n += c.n;
        }
      }
      merged.push({ first: a.first, last: b.last, sets: a.sets + b.sets, counts });
    }
    this.bars.splice(0, this.bars.length, ...merged);
    this.blockSize *= 2;
  }

  /** Sets per bar (the last bar may hold fewer). */
  get setsPerBar(): number {
    return this.blockSize;
  }

  result(): CountBar[] {
    return this.bars.map((b) => ({ ...b, counts: { ...b.counts } }));
  }
}

/** Count sums per plate and well. */
export class WellCountSums {
  private readonly wells = new Map<string, WellCounts>();

  add(plate: string | undefined, well: string | undefined, counts: Record<string, number>): void {
    if (well === undefined) return;
    const id = `${plate ?? ''}\t${well}`;
    let entry = this.wells.get(id);
    if (!entry) this.wells.set(id, (entry = { plate: plate ?? '', well, counts: {} }));
    addCounts(entry.counts, counts);
  }

  result(): WellCounts[] {
    return [...this.wells.values()];
  }
}
