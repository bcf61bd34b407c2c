import fs from 'node:fs';
import execa from 'execa';
import { workerConfig } from './config';

/**
 * The facts about CellProfiler on this machine that the engine, the installer, `submit` and
 * `doctor` all need: where it is, how to run it headless, and its exact version.
 */

/** Headless: matplotlib must never look for a display on a worker. */
export const HEADLESS_ENV = { MPLBACKEND: 'Agg' } as const;

export function headlessEnv(): NodeJS.ProcessEnv {
  return { ...process.env, ...HEADLESS_ENV };
}

/** The configured `cellprofiler` executable when it exists on this machine, else undefined. */
export function configuredCellProfiler(): string | undefined {
  const configured = workerConfig().CPFLOW_CELLPROFILER;
  return configured && fs.existsSync(configured) ? configured : undefined;
}

const VERSION_PATTERN = /^\d+\.\d+\.\d+[0-9A-Za-z.+-]*$/;

/** Exact `cellprofiler --version` output, e.g. `5.0.0.dev784`. */
export async function probeCellProfilerVersion(executable: string): Promise<string> {
  const result = await execa(executable, ['--version'], { reject: false, timeout: 180_000, env: headlessEnv(), stdin: 'ignore' });
  const lines = result.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  const version = lines[lines.length - 1] ?? '';
  if (result.exitCode !== 0 || !VERSION_PATTERN.test(version)) {
    const output = `${result.stdout}\n${result.stderr}`.split('\n').filter((l) => l.trim() !== '').slice(-10).join('\n');
    throw new Error(`\`${executable} --version\` failed (exit ${result.exitCode ?? 'none'}): ${output}`);
  }
  return version;
}
