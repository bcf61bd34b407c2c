import { adaptiveBatchSize, DEFAULTS, updatedSecondsPerSet, type ImageSetOutcome } from '../../core/model';

/** Adaptive batching's two pure rules (core/model/batching.ts), which the chunk workflow applies. */

const bounds = { engineTimeoutSeconds: DEFAULTS.ENGINE_TIMEOUT_SECONDS };
const done = (imageSetId: number, engineSeconds: number, extra: Partial<ImageSetOutcome> = {}): ImageSetOutcome =>
  ({ imageSetId, status: 'done', attempts: 1, engineSeconds, ...extra }) as ImageSetOutcome;

describe('adaptiveBatchSize', () => {
  it('starts at one set, before anything was measured', () => {
    expect(adaptiveBatchSize(undefined, bounds)).toBe(1);
    expect(adaptiveBatchSize(Number.NaN, bounds)).toBe(1);
  });

  it('keeps the per-activity overhead at the configured fraction of the engine time', () => {
    for (const perSet of [0.1, 0.5, 1, 2.5]) {
      const size = adaptiveBatchSize(perSet, bounds);
      // The smallest size whose engine time makes the overhead at most the fraction…
      expect(DEFAULTS.ACTIVITY_OVERHEAD_SECONDS).toBeLessThanOrEqual(DEFAULTS.ACTIVITY_OVERHEAD_FRACTION * perSet * size + 1e-9);
      // …and one set fewer would not (or it is already 1).
      if (size > 1) expect(DEFAULTS.ACTIVITY_OVERHEAD_SECONDS).toBeGreaterThan(DEFAULTS.ACTIVITY_OVERHEAD_FRACTION * perSet * (size - 1));
    }
    expect(adaptiveBatchSize(0.5, bounds)).toBe(8);
  });

  it('runs a slow set alone and a 5 ms set in the largest batch', () => {
    expect(adaptiveBatchSize(60, bounds)).toBe(1);
    expect(adaptiveBatchSize(0.005, bounds)).toBe(DEFAULTS.MAX_BATCH_SIZE);
    expect(adaptiveBatchSize(0, bounds)).toBe(DEFAULTS.MAX_BATCH_SIZE);
  });

  it('keeps a batch well inside the engine time-out', () => {
    // 0.01 s a set wants 400 sets; a 1 s time-out allows 0.25 s of them: 25.
    expect(adaptiveBatchSize(0.01, { engineTimeoutSeconds: 1 })).toBe(25);
    expect(adaptiveBatchSize(10, { engineTimeoutSeconds: 10 })).toBe(1);
  });
});

describe('updatedSecondsPerSet', () => {
  it('averages what an activity analysed with the previous estimate', () => {
    expect(updatedSecondsPerSet(undefined, [done(1, 0.2), done(2, 0.4)])).toBeCloseTo(0.3, 9);
    expect(updatedSecondsPerSet(1, [done(1, 0.2), done(2, 0.4)])).toBeCloseTo(0.65, 9);
  });

  it('ignores skipped and failed sets and sets that report no engine time', () => {
    const outcomes = [
      done(1, 9, { skipped: true }),
      { imageSetId: 2, status: 'failed', attempts: 1, error: 'x' } as ImageSetOutcome,
      { imageSetId: 3, status: 'done', attempts: 1 } as ImageSetOutcome,
    ];
    expect(updatedSecondsPerSet(0.5, outcomes)).toBe(0.5);
    expect(updatedSecondsPerSet(undefined, outcomes)).toBeUndefined();
    expect(updatedSecondsPerSet(undefined, [...outcomes, done(4, 2)])).toBe(2);
  });
});
