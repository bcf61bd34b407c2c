/**
 * mulberry32: a tiny, fast, seedable 32-bit PRNG. Used where results must be reproducible for the
 * same seed: the report's reservoir samples and the synthetic plates of the demo, tests and bench.
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
