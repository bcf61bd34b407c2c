import { workerConfig } from '../../core/config';
import { configuredCellProfiler, configuredPlugins } from '../../core/cellprofiler';
import type { EngineName, EngineOptions } from '../../core/model';
import type { Engine } from './types';
import { createBuiltinEngine } from './builtin';
import { createCellProfilerEngine, prestartWarmCellProfilers, probeCellProfilerIdentity } from './cellprofiler';
import { createNoopEngine } from './noop';

export * from './types';

export interface EngineSelection extends EngineOptions {
  engine: EngineName;
}

/** Engines are cached per process: CellProfiler's version probe costs a second or two. */
const cache = new Map<string, Engine>();

/** Not an input error and not transient on this worker: the activity reports it non-retryable. */
export class EngineUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EngineUnavailableError';
  }
}

/**
 * The engine for an experiment on this worker. Benchmarks only: `CPFLOW_ENGINE_OVERRIDE=noop`
 * replaces every engine with the no-op one (tables without analysis), so dispatch throughput can be
 * measured without the analysis cost.
 */
export function engineFor(selection: EngineSelection): Engine {
  const cacheKey = workerConfig().CPFLOW_ENGINE_OVERRIDE === 'noop' ? 'noop' : JSON.stringify(selection);
  const cached = cache.get(cacheKey);
  if (cached) return cached;
  const engine = cacheKey === 'noop' ? createNoopEngine({ runLog: workerConfig().CPFLOW_NOOP_RUN_LOG }) : createEngine(selection);
  cache.set(cacheKey, engine);
  return engine;
}

function createEngine(selection: EngineSelection): Engine {
  switch (selection.engine) {
    case 'builtin':
      return createBuiltinEngine({
        nucleiChannel: selection.nucleiChannel,
        minDiameter: selection.minDiameter,
        maxDiameter: selection.maxDiameter,
      });
    case 'cellprofiler': {
      const executable = configuredCellProfiler();
      if (!executable) {
        throw new EngineUnavailableError(
          'CellProfiler is not installed on this worker (set CPFLOW_CELLPROFILER to the cellprofiler executable; ' +
            '`npm run stack -- install-cellprofiler` installs it)',
        );
      }
      return createCellProfilerEngine({ executable, pluginsDir: configuredPlugins() });
    }
  }
}

/**
 * What an analysis worker does for its engines before it polls: CellProfiler's identity probe
 * (version and environment, a CellProfiler start) and the warm processes' start-up are paid here, not
 * by the first image sets. Returns a
 * line for the log; a failed probe is reported and left for the activities to retry.
 */
export async function prepareEngines(): Promise<string | undefined> {
  const executable = configuredCellProfiler();
  if (!executable || workerConfig().CPFLOW_ENGINE_OVERRIDE === 'noop') return undefined;
  try {
    // The warm processes start meanwhile: a slot's first image set does not wait for them either.
    const [identity, warm] = await Promise.all([
      probeCellProfilerIdentity(executable),
      prestartWarmCellProfilers({ executable, pluginsDir: configuredPlugins() }),
    ]);
    return `CellProfiler ${identity.version} ready${warm > 0 ? ` (${warm} warm process${warm === 1 ? '' : 'es'})` : ''}`;
  } catch (err) {
    return `could not probe CellProfiler at ${executable} (${err instanceof Error ? err.message : String(err)}); image sets will try again`;
  }
}
