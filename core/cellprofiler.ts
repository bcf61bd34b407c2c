import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
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

/** The CellProfiler plugins directory configured on this machine (CPFLOW_CELLPROFILER_PLUGINS), if any. */
export function configuredPlugins(): string | undefined {
  return workerConfig().CPFLOW_CELLPROFILER_PLUGINS;
}

/**
 * Every file of a plugins directory (recursively, without Python's caches) with its sha256, sorted
 * by path: what the provenance records, and what decides whether earlier results still hold.
 */
export async function pluginFiles(dir: string): Promise<Array<{ file: string; sha256: string }>> {
  const entries = await fs.promises.readdir(dir, { recursive: true, withFileTypes: true });
  const files = entries
    .filter((e) => e.isFile() && !e.parentPath.split(path.sep).includes('__pycache__') && !e.name.endsWith('.pyc'))
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
  return Promise.all(
    files.map(async (file) => ({
      file,
      sha256: crypto.createHash('sha256').update(await fs.promises.readFile(path.join(dir, file))).digest('hex'),
    })),
  );
}

/** The venv's python beside a `cellprofiler` entry point, when there is one (submit-time checks use it). */
export function pythonBeside(executable: string): string | undefined {
  const candidate = path.join(path.dirname(executable), 'python');
  return fs.existsSync(candidate) ? candidate : undefined;
}
