import { reconcileCounts } from '../../starter/status-view';

const db = (done: number, failed: number, total: number) => ({ pending: total - done - failed, running: 0, done, failed, cancelled: 0, total });

describe('cpflow status counts', () => {
  it('never says more sets are running than are left (the "20 done … 48 running of 48" report)', () => {
    // MariaDB has 20 sets done; the workflow's chunk has not reported yet, so it counts 0 done, 48 running.
    const c = reconcileCounts(db(20, 0, 48), { done: 0, failed: 0, running: 48, total: 48 });
    expect(c).toEqual({ total: 48, done: 20, failed: 0, running: 28, pending: 0 });
  });

  it('always adds up to the total, whichever source is ahead', () => {
    const cases: Array<[ReturnType<typeof db>, { done: number; failed: number; running: number; total: number } | undefined]> = [
      [db(0, 0, 100), { done: 40, failed: 2, running: 16, total: 100 }],
      [db(45, 3, 100), { done: 40, failed: 2, running: 16, total: 100 }],
      [db(100, 0, 100), { done: 80, failed: 0, running: 20, total: 100 }],
      [db(10, 0, 100), undefined],
      [db(0, 0, 120), { done: 0, failed: 0, running: 16, total: 100 }],
    ];
    for (const [counts, progress] of cases) {
      const c = reconcileCounts(counts, progress);
      expect(c.done + c.failed + c.running + c.pending).toBe(c.total);
      expect(Math.min(c.done, c.failed, c.running, c.pending)).toBeGreaterThanOrEqual(0);
      expect(c.done).toBe(Math.max(counts.done, progress?.done ?? 0));
    }
    expect(reconcileCounts(db(45, 3, 100), { done: 40, failed: 2, running: 16, total: 100 })).toEqual({ total: 100, done: 45, failed: 3, running: 10, pending: 42 });
  });
});
