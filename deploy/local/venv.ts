/**
 * The mechanism shared by the pinned Python installers (cellprofiler.ts, cytotable.ts): a venv in
 * the cache dir built from a fixed list of pins, and a marker file written last that records a hash
 * of those pins. A venv whose marker is missing or holds another hash is rebuilt from scratch; one
 * whose marker matches is reused without starting a process. A directory lock keeps two processes
 * from building the same venv at once.
 *
 * What to install and how to check it stays with each installer (`install` and `verify`).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import execa from 'execa';
import { z } from 'zod';

export type Log = (line: string) => void;

/** Supported CPython 3 minor versions, inclusive (the base interpreter is checked before building). */
export interface PythonMinors {
  min: number;
  max: number;
}

export interface PinnedVenvSpec {
  /** Name in log lines and errors, e.g. 'CellProfiler'. */
  label: string;
  /** Absolute path of the venv directory. */
  venv: string;
  /** Marker file name inside the venv. */
  markerFile: string;
  /** Every requirement the venv is built from, in a fixed order; their hash is kept in the marker. */
  pins: readonly string[];
  /** Version the installed package must report. */
  expectedVersion: string;
  /** Program the caller uses, relative to the venv (e.g. 'bin/cellprofiler'); must exist for reuse. */
  entryPoint: string;
  pythonMinors: PythonMinors;
  /** Picks the base interpreter; default CPFLOW_PYTHON or `python3` (its version is checked either way). */
  basePython?: () => Promise<string>;
  /** Fields written into the marker ahead of the shared ones (CellProfiler records its build). */
  markerExtras?: Record<string, string>;
  /** Reports the installed package's version (on reuse and after installing). */
  installedVersion(entryPoint: string): Promise<string>;
  /** Installs the packages into the fresh venv (given its python), including any `pip check`. */
  install(python: string, log: Log): Promise<void>;
  /** Proves the installed venv works (runs after the version check); throws if it does not. */
  verify(entryPoint: string, log: Log): Promise<void>;
}

export interface PinnedVenvInstall {
  /** Absolute path of spec.entryPoint. */
  entryPoint: string;
  version: string;
  /** Wall time of this call (near zero when the venv was reused). */
  seconds: number;
}

const markerSchema = z.object({
  pinsSha256: z.string(),
  python: z.string(),
  version: z.string(),
  installedAt: z.string(),
});
export type Marker = z.infer<typeof markerSchema>;

export function pinsSha256(pins: readonly string[]): string {
  return createHash('sha256').update(pins.join('\n')).digest('hex');
}

/** The marker's shared fields, or undefined if it is missing or unreadable (extra fields are ignored). */
export function readMarker(venv: string, markerFile: string): Marker | undefined {
  try {
    const parsed = markerSchema.safeParse(JSON.parse(fs.readFileSync(path.join(venv, markerFile), 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

export async function writeMarker(
  venv: string,
  markerFile: string,
  marker: Marker,
  extras: Record<string, string> = {},
): Promise<void> {
  await fs.promises.writeFile(path.join(venv, markerFile), `${JSON.stringify({ ...extras, ...marker }, null, 2)}\n`);
}

/**
 * Absolute path of the entry point if the venv is complete and built from these pins (the marker is
 * written only after a verified install), else undefined. Cheap: no process is started.
 */
export function readyEntryPoint(
  venv: string,
  markerFile: string,
  pins: readonly string[],
  entryPoint: string,
): string | undefined {
  const marker = readMarker(venv, markerFile);
  const entry = path.join(venv, entryPoint);
  if (!marker || marker.pinsSha256 !== pinsSha256(pins)) return undefined;
  if (!fs.existsSync(entry) || !fs.existsSync(venvPython(venv))) return undefined;
  return entry;
}

export function venvPython(venv: string): string {
  return path.join(venv, 'bin', 'python');
}

/** Installs (or reuses) the venv described by spec. Safe to call from several processes at once. */
export async function installPinnedVenv(spec: PinnedVenvSpec, log: Log): Promise<PinnedVenvInstall> {
  const started = Date.now();
  const elapsed = () => (Date.now() - started) / 1000;
  const { label, venv } = spec;
  await fs.promises.mkdir(path.dirname(venv), { recursive: true });
  const ready = () => readyEntryPoint(venv, spec.markerFile, spec.pins, spec.entryPoint);

  const reused = ready();
  if (reused) {
    const version = await spec.installedVersion(reused);
    log(`${label} ${version} already installed in ${venv}`);
    return { entryPoint: reused, version, seconds: elapsed() };
  }

  const release = await acquireLock(`${venv}.lock`, label, log);
  try {
    // Another process may have finished the install while we waited.
    const installedMeanwhile = ready();
    if (installedMeanwhile) {
      return { entryPoint: installedMeanwhile, version: await spec.installedVersion(installedMeanwhile), seconds: elapsed() };
    }

    const basePython = spec.basePython ? await spec.basePython() : process.env.CPFLOW_PYTHON?.trim() || 'python3';
    const pythonVersion = await checkPython(basePython, label, spec.pythonMinors);
    log(`installing ${label} ${spec.expectedVersion} with ${basePython} (Python ${pythonVersion}) into ${venv}`);
    await fs.promises.rm(venv, { recursive: true, force: true });
    await runLogged(basePython, ['-m', 'venv', venv], log);
    await spec.install(venvPython(venv), log);

    const entryPoint = path.join(venv, spec.entryPoint);
    const version = await spec.installedVersion(entryPoint);
    if (version !== spec.expectedVersion) {
      throw new Error(`installed ${label} reports version ${version}, expected ${spec.expectedVersion}`);
    }
    await spec.verify(entryPoint, log);

    const marker: Marker = { pinsSha256: pinsSha256(spec.pins), python: pythonVersion, version, installedAt: new Date().toISOString() };
    await writeMarker(venv, spec.markerFile, marker, spec.markerExtras);
    log(`${label} ${version} installed and verified in ${elapsed().toFixed(0)} s`);
    return { entryPoint, version, seconds: elapsed() };
  } finally {
    await release();
  }
}

/** `python -m pip install` with the flags that keep pip quiet and non-interactive in a log. */
export function pipInstall(python: string, args: readonly string[], log: Log): Promise<void> {
  return runLogged(python, ['-m', 'pip', 'install', '--disable-pip-version-check', '--no-input', '--progress-bar', 'off', ...args], log);
}

/**
 * Runs a command, passing each non-empty output line to log; on failure throws with the last 30
 * lines, so the error says why without the caller having kept the log.
 */
export async function runLogged(file: string, args: readonly string[], log: Log, env: Record<string, string> = {}): Promise<void> {
  const child = execa(file, args, { all: true, reject: false, stdin: 'ignore', env: { ...process.env, ...env } });
  const lastLines: string[] = [];
  child.all?.setEncoding('utf8');
  let partial = '';
  child.all?.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (line.trim() === '') continue;
      lastLines.push(line);
      if (lastLines.length > 30) lastLines.shift();
      log(line);
    }
  });
  const result = await child;
  if (result.exitCode !== 0) {
    throw new Error(`\`${path.basename(file)} ${args.slice(0, 4).join(' ')} …\` failed (exit ${result.exitCode}):\n${lastLines.join('\n')}`);
  }
}

/** Parses `major.minor.patch` as printed by the check below; undefined for anything else. */
export function parsePythonVersion(text: string): { major: number; minor: number } | undefined {
  const match = /^(\d+)\.(\d+)\.\d+$/.exec(text.trim());
  return match ? { major: Number(match[1]), minor: Number(match[2]) } : undefined;
}

export function pythonVersionFits(text: string, minors: PythonMinors): boolean {
  const parsed = parsePythonVersion(text);
  return parsed !== undefined && parsed.major === 3 && parsed.minor >= minors.min && parsed.minor <= minors.max;
}

/** The base interpreter's version if it is in range; throws a message naming CPFLOW_PYTHON otherwise. */
async function checkPython(python: string, label: string, minors: PythonMinors): Promise<string> {
  const range = `3.${minors.min}–3.${minors.max}`;
  const result = await execa(python, ['-c', 'import sys; print("%d.%d.%d" % sys.version_info[:3])'], { reject: false });
  if (result.exitCode !== 0) throw new Error(`cannot run ${python} (set CPFLOW_PYTHON to a Python ${range} interpreter)`);
  const version = result.stdout.trim();
  if (!pythonVersionFits(version, minors)) {
    throw new Error(`${python} is Python ${version}; the pinned ${label} venv needs Python ${range} (set CPFLOW_PYTHON)`);
  }
  return version;
}

/** A directory as a cross-process lock; a lock whose holder died is taken over. */
export async function acquireLock(lockDir: string, label: string, log: Log): Promise<() => Promise<void>> {
  const deadline = Date.now() + 30 * 60 * 1000;
  for (;;) {
    try {
      await fs.promises.mkdir(lockDir);
      await fs.promises.writeFile(path.join(lockDir, 'pid'), String(process.pid));
      return () => fs.promises.rm(lockDir, { recursive: true, force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = Number(await fs.promises.readFile(path.join(lockDir, 'pid'), 'utf8').catch(() => 'NaN'));
    if (Number.isInteger(holder) && !isAlive(holder)) {
      log(`removing stale install lock of process ${holder}`);
      await fs.promises.rm(lockDir, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for another ${label} install (lock ${lockDir})`);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
