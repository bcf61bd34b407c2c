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
  private readonly sample: number[] = [];

  constructor(
    private readonly capacity: number,
    private readonly random: () => number,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`reservoir capacity must be a positive integer, got ${capacity}`);
  }

  add(value: number): void {
    if (!Number.isFinite(value)) return;
    this.seen += 1;
    this.sum += value;
    if (value < this.min) this.min = value;
    if (value > this.max) this.max = value;
    if (this.sample.length < this.capacity) {
      this.sample.push(value);
      return;
    }
    // Keep the new value with probability capacity/seen, replacing a uniformly chosen slot.
    const slot = Math.floor(this.random() * this.seen);
    if (slot < this.capacity) this.sample[slot] = value;
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
