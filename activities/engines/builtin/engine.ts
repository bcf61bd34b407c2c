import { promises as fs } from 'fs';
import { CPFLOW_VERSION } from '../../../core/version';
import { ImageSetInputError, type Engine, type EngineIdentity, type EngineRunInput, type EngineRunResult, type EngineSetResult } from '../types';
import { builtinOptionsFromPipeline } from './pipeline-options';
import type { ThresholdMethod } from './segment';
import { runSetInThread } from './thread-pool';

export interface BuiltinEngineOptions {
  /** Channel holding the nuclei stain; default `DNA` when the set has it, else the set's first channel. */
  nucleiChannel?: string;
  /** Smallest equivalent diameter (px) kept; default 8. */
  minDiameter?: number;
  /** Largest equivalent diameter (px) kept; default 80. */
  maxDiameter?: number;
  /** Name of the objects and of their table (`<objectName>.csv`); default `Nuclei`. */
  objectName?: string;
  /** Global threshold method; default minimum cross-entropy (as CellProfiler), or the pipeline's method. */
  thresholdMethod?: ThresholdMethod;
}

export const BUILTIN_ENGINE_NAME = 'builtin';
export const BUILTIN_ENGINE_VERSION = `cpflow-builtin ${CPFLOW_VERSION}`;

/**
 * The builtin engine: nucleus segmentation and measurement in TypeScript, writing CellProfiler
 * ExportToSpreadsheet-style tables. When the run input carries a CellProfiler pipeline, the channel,
 * object name, diameter range and threshold method of its first IdentifyPrimaryObjects module are used
 * unless `options` sets them explicitly.
 */
export function createBuiltinEngine(options: BuiltinEngineOptions = {}): Engine {
  const identity: EngineIdentity = { name: BUILTIN_ENGINE_NAME, version: BUILTIN_ENGINE_VERSION };
  return {
    identity: async () => identity,
    run: async (input: EngineRunInput): Promise<EngineRunResult> => {
      const deadline = input.timeoutMs !== undefined ? Date.now() + input.timeoutMs : undefined;
      const fromPipeline = input.pipelinePath ? builtinOptionsFromPipeline(await readPipeline(input.pipelinePath)) : {};
      const settings: BuiltinEngineOptions = { ...fromPipeline, ...definedOnly(options) };
      const sets: EngineSetResult[] = [];
      for (const [index, imageSet] of input.imageSets.entries()) {
        if (input.signal?.aborted) throw abortError();
        // The work itself runs in a worker thread (thread-pool.ts): this event loop stays free.
        sets.push(
          await runSetInThread(
            { imageSet, imageNumber: imageSet.imageNumber ?? index + 1, settings, identity, outDir: input.outDir },
            {
              signal: input.signal,
              timeoutMs: deadline !== undefined ? deadline - Date.now() : undefined,
              onProgress: input.onProgress,
            },
          ),
        );
      }
      return { engine: identity, sets };
    },
  };
}

async function readPipeline(pipelinePath: string): Promise<string> {
  try {
    return await fs.readFile(pipelinePath, 'utf8');
  } catch (err) {
    throw new ImageSetInputError(`Pipeline ${pipelinePath} cannot be read: ${(err as Error).message}`);
  }
}

function definedOnly(options: BuiltinEngineOptions): BuiltinEngineOptions {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as BuiltinEngineOptions;
}

function abortError(): Error {
  const error = new Error('builtin engine run was aborted');
  error.name = 'AbortError';
  return error;
}
