import { workerConfig } from '../core/config';

/**
 * Engine slots: how many engine invocations a cellprofiler-pool worker runs at once
 * (CPFLOW_ANALYZE_SLOTS). The worker takes a few more analysis activities than that (see
 * ANALYZE_PREFETCH_PER_SLOT), so the inputs of the next image sets download, and the outputs of the
 * last ones upload, while the slots compute; an activity waits here, heartbeating, for a free slot.
 */

export type Release = () => void;

/** A counting semaphore whose waits can be aborted (an activity cancelled while it waits). */
export class EngineSlots {
  private free: number;
  private readonly waiting: Array<{ grant: () => void }> = [];

  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`engine slots must be a positive integer, got ${size}`);
    this.free = size;
  }

  /** Slots in use right now (for progress details and tests). */
  get busy(): number {
    return this.size - this.free;
  }

  acquire(signal?: AbortSignal): Promise<Release> {
    if (signal?.aborted) return Promise.reject(abortError());
    if (this.free > 0) {
      this.free -= 1;
      return Promise.resolve(this.releaser());
    }
    return new Promise<Release>((resolve, reject) => {
      const waiter = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(this.releaser());
        },
      };
      const onAbort = () => {
        const index = this.waiting.indexOf(waiter);
        if (index >= 0) this.waiting.splice(index, 1);
        reject(abortError());
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private releaser(): Release {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      // A freed slot passes straight to the next waiter, so `free` never counts it in between.
      if (next) next.grant();
      else this.free += 1;
    };
  }
}

function abortError(): Error {
  const error = new Error('cancelled while waiting for an analysis slot');
  error.name = 'AbortError';
  return error;
}

let processSlots: EngineSlots | undefined;

/** This process's engine slots, CPFLOW_ANALYZE_SLOTS of them. */
export function engineSlots(): EngineSlots {
  processSlots ??= new EngineSlots(workerConfig().CPFLOW_ANALYZE_SLOTS);
  return processSlots;
}
