import fs from 'node:fs';
import { workerConfig } from '../lib/config';
import type { Engine } from './types';
import { createBuiltinEngine } from './builtin';
import { createCellProfilerEngine } from './cellprofiler';
import { createNoopEngine } from './noop';
import { ImageSetInputError } from './types';

export * from './types';

export interface EngineSelection {
  engine: 'builtin' | 'cellprofiler' | 'command';
  nucleiChannel?: string;
  minDiameter?: number;
  maxDiameter?: number;
}

/** Engines are cached per process: CellProfiler's version probe costs a second or two. */
const cache = new Map<string, Engine>();

/** Where this worker finds CellProfiler, if anywhere. */
export function cellProfilerExecutablePath(): string | undefined {
  const configured = workerConfig().CPFLOW_CELLPROFILER;
  return configured && fs.existsSync(configured) ? configured : undefined;
}

/**
 * Benchmarks only: `CPFLOW_ENGINE_OVERRIDE=noop` on a worker replaces every engine with the no-op one
 * (tables without analysis), so dispatch throughput can be measured without the analysis cost.
 */
function engineOverride(): 'noop' | undefined {
  return workerConfig().CPFLOW_ENGINE_OVERRIDE;
}

export function engineFor(selection: EngineSelection): Engine {
  if (engineOverride() === 'noop') {
    const noop = cache.get('noop') ?? createNoopEngine();
    cache.set('noop', noop);
    return noop;
  }
  const cacheKey = JSON.stringify(selection);
  const cached = cache.get(cacheKey);
  if (cached) return cached;
  let engine: Engine;
  switch (selection.engine) {
    case 'builtin':
      engine = createBuiltinEngine({
        nucleiChannel: selection.nucleiChannel,
        minDiameter: selection.minDiameter,
        maxDiameter: selection.maxDiameter,
      });
      break;
    case 'cellprofiler': {
      const executable = cellProfilerExecutablePath();
      if (!executable) {
        // Not an input error and not transient on this worker: the activity reports it non-retryable.
        throw new EngineUnavailableError(
          'CellProfiler is not installed on this worker (set CPFLOW_CELLPROFILER to the cellprofiler executable; ' +
            '`npm run stack -- install-cellprofiler` installs it)',
        );
      }
      engine = createCellProfilerEngine({
        executable,
        timeoutMs: workerConfig().CPFLOW_CELLPROFILER_TIMEOUT_SECONDS * 1000,
      });
      break;
    }
    case 'command':
      throw new EngineUnavailableError('the command engine is not implemented yet');
  }
  cache.set(cacheKey, engine);
  return engine;
}

export class EngineUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EngineUnavailableError';
  }
}

export { ImageSetInputError };
