/**
 * Asks CellProfiler itself about a pipeline and a sample of the experiment's files before anything is
 * registered: the image sets and groups its input modules make of them (what `--print-groups` prints
 * for a measurements file), which modules aggregate across image sets, and its own validation errors
 * and warnings. Runs cellprofiler_inspect.py with the CellProfiler venv's python; nothing is analysed.
 */
import path from 'node:path';
import execa from 'execa';
import { z } from 'zod';
import { HEADLESS_ENV } from '../cellprofiler';

const inspectionSchema = z.object({
  modules: z.array(
    z.object({
      num: z.number(),
      name: z.string(),
      enabled: z.boolean(),
      aggregation: z.boolean(),
      warning: z.string().nullable(),
      error: z.string().nullable(),
    }),
  ),
  loadError: z.string().nullable(),
  prepareRunError: z.string().nullable(),
  imageSets: z.array(
    z.object({
      imageNumber: z.number(),
      groupNumber: z.number(),
      groupIndex: z.number(),
      urls: z.record(z.string(), z.string()),
      metadata: z.record(z.string(), z.string()),
    }),
  ),
  groupingKeys: z.array(z.string()),
  logWarnings: z.array(z.string()),
});
export type PipelineInspection = z.infer<typeof inspectionSchema>;

export const INSPECT_SCRIPT = path.join(__dirname, 'cellprofiler_inspect.py');

export interface InspectInput {
  python: string;
  pipeline: string;
  fileList?: string;
  dataFile?: string;
  pluginsDir?: string;
  timeoutMs: number;
}

export async function inspectPipeline(input: InspectInput): Promise<PipelineInspection> {
  const args = [INSPECT_SCRIPT, '--pipeline', input.pipeline];
  if (input.fileList) args.push('--file-list', input.fileList);
  if (input.dataFile) args.push('--data-file', input.dataFile);
  if (input.pluginsDir) args.push('--plugins-directory', input.pluginsDir);
  const result = await execa(input.python, args, {
    reject: false,
    timeout: input.timeoutMs,
    env: { ...process.env, ...HEADLESS_ENV },
    stdin: 'ignore',
  });
  const last = result.stdout.trim().split('\n').pop() ?? '';
  let parsed: unknown;
  try {
    parsed = JSON.parse(last);
  } catch {
    const tail = `${result.stdout}\n${result.stderr}`.split('\n').filter((l) => l.trim()).slice(-8).join('\n');
    throw new Error(`CellProfiler could not inspect ${input.pipeline} (exit ${result.exitCode ?? 'none'}${result.timedOut ? ', timed out' : ''}):\n${tail}`);
  }
  return inspectionSchema.parse(parsed);
}
