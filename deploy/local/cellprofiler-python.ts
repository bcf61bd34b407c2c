/**
 * Finds the Python interpreter the CellProfiler venv is built with.
 *
 * CellProfiler 5.0.0.dev784 declares Python 3.9 (the only `Programming Language :: Python :: 3.x`
 * classifier of cellprofiler, cellprofiler-core, cellprofiler-library and centriole). It does not run
 * correctly on 3.11+: from 3.11 on, `format()` / f-strings of `(str, Enum)` members give
 * `Class.MEMBER` instead of the value, and cellprofiler_library builds measurement names that way
 * (`f"{C_OBJSKELETON}_{feature_name}_{image_name}"` in modules/_measureobjectskeleton.py makes
 * `ObjectSkeleton_SkeletonMeasurements.NUMBER_TRUNKS_…` on 3.11, and the columns CellProfiler declares
 * stay empty). 3.10 formats them as 3.9 does and gives identical outputs on the module-coverage
 * pipeline, so 3.9 is preferred and 3.10 accepted.
 *
 * Order: CPFLOW_CELLPROFILER_PYTHON (used as given, and must fit), then CPFLOW_PYTHON if it fits
 * (CytoTable shares it and needs 3.11+, so usually it does not), `python3.9` / `python3.10` on PATH,
 * pyenv's installed versions ($PYENV_ROOT or ~/.pyenv), /usr/bin and /usr/local/bin, and `python3`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import execa from 'execa';
import { pythonVersionFits, type PythonMinors } from './venv';

/** Python minors the pinned CellProfiler venv supports (3.9 declared by the build, 3.10 verified). */
export const CELLPROFILER_PYTHON_MINORS: PythonMinors = { min: 9, max: 10 };

export interface FoundPython {
  executable: string;
  version: string;
}

async function versionOf(executable: string): Promise<string | undefined> {
  const result = await execa(executable, ['-c', 'import sys; print("%d.%d.%d" % sys.version_info[:3])'], {
    reject: false,
    timeout: 30_000,
    stdin: 'ignore',
  }).catch(() => undefined);
  return result && result.exitCode === 0 ? result.stdout.trim() : undefined;
}

function pyenvCandidates(): string[] {
  const root = process.env.PYENV_ROOT?.trim() || path.join(os.homedir(), '.pyenv');
  const versions = path.join(root, 'versions');
  let names: string[] = [];
  try {
    names = fs.readdirSync(versions);
  } catch {
    return [];
  }
  const out: string[] = [];
  for (let minor = CELLPROFILER_PYTHON_MINORS.min; minor <= CELLPROFILER_PYTHON_MINORS.max; minor++) {
    // Newest patch release first.
    const matching = names
      .filter((n) => new RegExp(`^3\\.${minor}\\.\\d+$`).test(n))
      .sort((a, b) => Number(b.split('.')[2]) - Number(a.split('.')[2]));
    for (const name of matching) out.push(path.join(versions, name, 'bin', `python3.${minor}`));
  }
  return out;
}

/** The first interpreter that fits CELLPROFILER_PYTHON_MINORS; throws naming what was tried. */
export async function findCellProfilerPython(env: NodeJS.ProcessEnv = process.env): Promise<FoundPython> {
  const range = `3.${CELLPROFILER_PYTHON_MINORS.min}–3.${CELLPROFILER_PYTHON_MINORS.max}`;
  const explicit = env.CPFLOW_CELLPROFILER_PYTHON?.trim();
  if (explicit) {
    const version = await versionOf(explicit);
    if (!version) throw new Error(`CPFLOW_CELLPROFILER_PYTHON=${explicit} cannot be run`);
    if (!pythonVersionFits(version, CELLPROFILER_PYTHON_MINORS)) {
      throw new Error(`CPFLOW_CELLPROFILER_PYTHON=${explicit} is Python ${version}; the pinned CellProfiler build needs Python ${range}`);
    }
    return { executable: explicit, version };
  }
  const candidates = [
    env.CPFLOW_PYTHON?.trim(),
    ...Array.from({ length: CELLPROFILER_PYTHON_MINORS.max - CELLPROFILER_PYTHON_MINORS.min + 1 }, (_, i) => `python3.${CELLPROFILER_PYTHON_MINORS.min + i}`),
    ...pyenvCandidates(),
    ...['/usr/bin', '/usr/local/bin'].flatMap((dir) => [`${dir}/python3.9`, `${dir}/python3.10`]),
    'python3',
  ].filter((c): c is string => Boolean(c));
  const seen: string[] = [];
  for (const candidate of [...new Set(candidates)]) {
    const version = await versionOf(candidate);
    seen.push(`${candidate}${version ? ` (${version})` : ''}`);
    if (version && pythonVersionFits(version, CELLPROFILER_PYTHON_MINORS)) return { executable: candidate, version };
  }
  throw new Error(
    `no Python ${range} found for CellProfiler 5.0.0.dev784 (its declared Python is 3.9; 3.11+ mis-names ` +
      `measurements); tried ${seen.join(', ')}. Install Python 3.9 or 3.10 and set CPFLOW_CELLPROFILER_PYTHON`,
  );
}
