import { workerConfig } from '../../core/config';
import { configuredCellProfiler, configuredPlugins } from '../../core/cellprofiler';
import type { EngineName, EngineOptions } from '../../core/model';
import type { Engine } from './types';
import { createBuiltinEngine } from './builtin';
import { createCellProfilerEngine, probeCellProfilerIdentity } from './cellprofiler';
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
 * What an analysis worker learns about its engines before it polls: CellProfiler's identity probe
 * (version and environment, a CellProfiler start) is paid here, not by the first image set. Returns a
 * line for the log; a failed probe is reported and left for the activities to retry.
 */
export async function prepareEngines(): Promise<string | undefined> {
  const executable = configuredCellProfiler();
  if (!executable || workerConfig().CPFLOW_ENGINE_OVERRIDE === 'noop') return undefined;
  try {
    const identity = await probeCellProfilerIdentity(executable);
    return `CellProfiler ${identity.version} ready`;
  } catch (err) {
    return `could not probe CellProfiler at ${executable} (${err instanceof Error ? err.message : String(err)}); image sets will try again`;
  }
}
