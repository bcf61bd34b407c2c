/**
 * Bounded-memory summaries of a stream of numbers: exact count/min/max/mean plus a uniform random
 * sample (reservoir sampling, Vitter's "Algorithm R") for the report's histograms. A seeded
 * generator makes the sample, and therefore the report, reproducible for the same input order.
 */

export interface DistributionSummary {
  /** Number of finite values seen (not just sampled). */
  count: number;
  min: number | null;
  max: number | null;
  mean: number | null;
  /** Uniform random sample of at most the reservoir's capacity; all values when fewer were seen. */
  sample: number[];
}

export class Reservoir {
  private seen = 0;
  private sum = 0;
  private min = Infinity;
  private max = -Infinity;
  /** Values offered to the sample (equal to `seen` unless aggregates or sample-only values came in). */
  private offered = 0;
  private readonly sample: number[] = [];

  constructor(
    private readonly capacity: number,
    private readonly random: () => number,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`reservoir capacity must be a positive integer, got ${capacity}`);
  }

  /** One value: into the exact statistics and offered to the sample. */
  add(value: number): void {
    if (!Number.isFinite(value)) return;
    this.addExact(1, value, value, value);
    this.addToSample(value);
  }

  /** Exact statistics of values that are not offered to the sample (a set measured from its summary). */
  addAggregate(a: { n: number; sum: number; min: number; max: number }): void {
    if (a.n > 0) this.addExact(a.n, a.sum, a.min, a.max);
  }

  /** A value for the sample only (its statistics already came in through addAggregate). */
  addToSample(value: number): void {
    if (!Number.isFinite(value)) return;
    this.offered += 1;
    if (this.sample.length < this.capacity) {
      this.sample.push(value);
      return;
    }
    // Keep the new value with probability capacity/offered, replacing a uniformly chosen slot.
    const slot = Math.floor(this.random() * this.offered);
    if (slot < this.capacity) this.sample[slot] = value;
  }

  private addExact(n: number, sum: number, min: number, max: number): void {
    this.seen += n;
    this.sum += sum;
    if (min < this.min) this.min = min;
    if (max > this.max) this.max = max;
  }

  summary(): DistributionSummary {
    const empty = this.seen === 0;
    return {
      count: this.seen,
      min: empty ? null : this.min,
      max: empty ? null : this.max,
      mean: empty ? null : this.sum / this.seen,
      sample: [...this.sample],
    };
  }
}

/** A uniform random sample of at most `capacity` items of a stream (Algorithm R), e.g. image sets. */
export class ItemReservoir<T> {
  private seen = 0;
  private readonly items: T[] = [];

  constructor(
    private readonly capacity: number,
    private readonly random: () => number,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`reservoir capacity must be a positive integer, got ${capacity}`);
  }

  add(item: T): void {
    this.seen += 1;
    if (this.items.length < this.capacity) {
      this.items.push(item);
      return;
    }
    const slot = Math.floor(this.random() * this.seen);
    if (slot < this.capacity) this.items[slot] = item;
  }

  sample(): T[] {
    return [...this.items];
  }
}
