/**
 * The environment a `cellprofiler` executable runs in, as provenance records it: the CellProfiler
 * build, the Python version and a sha256 of the installed package set (`pip freeze --all`).
 *
 * Two workers whose CellProfiler reports the same version can still compute different numbers (a
 * different matplotlib, scikit-image or Python changes results or breaks modules), so the build alone
 * does not identify what produced a table. The fingerprint is computed once per worker process and
 * executable (a second or so: one Python start), and compared by the analysis activity's
 * skip-if-done check, so a changed environment re-runs image sets instead of trusting old outputs.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import execa from 'execa';
import type { EngineEnvironment } from '../types';

/**
 * The Python interpreter that runs a console-script executable: its `#!` line (pip writes the venv's
 * python there), else `python` beside it.
 */
export function interpreterOf(executable: string): string {
  try {
    const fd = fs.openSync(executable, 'r');
    try {
      const buffer = Buffer.alloc(512);
      const length = fs.readSync(fd, buffer, 0, buffer.length, 0);
      const firstLine = buffer.subarray(0, length).toString('utf8').split('\n')[0];
      const match = /^#!\s*(\S+)/.exec(firstLine);
      if (match && !match[1].endsWith('/env') && fs.existsSync(match[1])) return match[1];
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // Fall through to the sibling interpreter.
  }
  return path.join(path.dirname(executable), 'python');
}

/** sha256 of the package set: `pip freeze --all` lines, trimmed, sorted case-insensitively. */
export function packageSetSha256(freezeOutput: string): string {
  const lines = freezeOutput
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()));
  return createHash('sha256').update(lines.join('\n')).digest('hex');
}

/** One short hash of the whole environment, for cache keys and log lines. */
export function environmentKey(env: EngineEnvironment): string {
  return createHash('sha256').update(`${env.build}\n${env.python}\n${env.packagesSha256}`).digest('hex');
}

const PROBE = [
  'import platform, subprocess, sys',
  'freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],',
  '                        check=True, capture_output=True, text=True).stdout',
  'print(platform.python_version())',
  'print(freeze, end="")',
].join('\n');

/** Probes the interpreter behind `executable`; `build` is CellProfiler's own `--version`. */
export async function probeCellProfilerEnvironment(executable: string, build: string): Promise<EngineEnvironment> {
  const python = interpreterOf(executable);
  const result = await execa(python, ['-c', PROBE], { reject: false, timeout: 120_000, stdin: 'ignore' });
  if (result.exitCode !== 0) {
    throw new Error(`cannot list the packages of ${python} (behind ${executable}): ${result.stderr.split('\n').slice(-5).join('\n')}`);
  }
  const [pythonVersion, ...freeze] = result.stdout.split('\n');
  return { build, python: pythonVersion.trim(), packagesSha256: packageSetSha256(freeze.join('\n')) };
}

const cache = new Map<string, Promise<EngineEnvironment>>();

/** Once per process and executable; a failed probe is not kept, so the next call tries again. */
export function cellProfilerEnvironment(executable: string, build: string): Promise<EngineEnvironment> {
  const key = `${executable}\n${build}`;
  let pending = cache.get(key);
  if (!pending) {
    pending = probeCellProfilerEnvironment(executable, build);
    cache.set(key, pending);
    pending.catch(() => cache.delete(key));
  }
  return pending;
}

/** Both undefined (engines without an environment, old provenance of such engines) counts as equal. */
export function sameEnvironment(a: EngineEnvironment | undefined, b: EngineEnvironment | undefined): boolean {
  if (!a || !b) return a === b;
  return a.build === b.build && a.python === b.python && a.packagesSha256 === b.packagesSha256;
}
