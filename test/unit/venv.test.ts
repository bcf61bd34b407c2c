import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  acquireLock,
  parsePythonVersion,
  pinsSha256,
  pythonVersionFits,
  readMarker,
  readyEntryPoint,
  writeMarker,
  type Marker,
} from '../../deploy/local/venv';

const MARKER_FILE = 'cpflow-test.json';
const PINS = ['tool==1.0', 'dep==2.0'];

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-venv-test-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A directory shaped like a finished venv: bin/python, bin/tool and (optionally) a marker. */
function fakeVenv(markerJson?: unknown): string {
  const venv = path.join(dir, 'venv');
  fs.mkdirSync(path.join(venv, 'bin'), { recursive: true });
  fs.writeFileSync(path.join(venv, 'bin', 'python'), '');
  fs.writeFileSync(path.join(venv, 'bin', 'tool'), '');
  if (markerJson !== undefined) fs.writeFileSync(path.join(venv, MARKER_FILE), JSON.stringify(markerJson));
  return venv;
}

describe('pinsSha256', () => {
  it('is the sha256 of the pins joined by newlines, in order (as installed markers hold it)', () => {
    // Values from `printf 'a==1\nb==2' | sha256sum` and `printf 'b==2\na==1' | sha256sum`.
    expect(pinsSha256(['a==1', 'b==2'])).toBe('76457601f3989b696f764fe654a98acb7396d4db67fc3c100cce7b2e11acca15');
    expect(pinsSha256(['b==2', 'a==1'])).toBe('ac54a1841336e9f3b9a7d8c83d05c209e4b4d0a3a0a75451d022b66459148b75');
  });
});

describe('marker files', () => {
  const marker: Marker = { pinsSha256: pinsSha256(PINS), python: '3.11.7', version: '1.0', installedAt: '2026-11-21T23:00:00.000Z' };

  it('writes extras first, then the shared fields, as pretty JSON with a final newline', async () => {
    const venv = fakeVenv();
    await writeMarker(venv, MARKER_FILE, marker, { build: '1.0.dev1' });
    const text = fs.readFileSync(path.join(venv, MARKER_FILE), 'utf8');
    expect(text.endsWith('}\n')).toBe(true);
    expect(Object.keys(JSON.parse(text))).toEqual(['build', 'pinsSha256', 'python', 'version', 'installedAt']);
    expect(JSON.parse(text)).toMatchObject({ build: '1.0.dev1', python: '3.11.7' });
    expect(readMarker(venv, MARKER_FILE)).toEqual(marker);
  });

  it('reads markers written by the installers before the refactor (both field orders)', () => {
    const cellProfilerShaped = { build: 'b', pinsSha256: 'h1', python: '3.11.7', version: 'b', installedAt: 't' };
    expect(readMarker(fakeVenv(cellProfilerShaped), MARKER_FILE)).toEqual({ pinsSha256: 'h1', python: '3.11.7', version: 'b', installedAt: 't' });
    fs.rmSync(path.join(dir, 'venv'), { recursive: true });
    const cytoTableShaped = { version: '1.2.6', pinsSha256: 'h2', python: '3.11.7', installedAt: 't' };
    expect(readMarker(fakeVenv(cytoTableShaped), MARKER_FILE)?.pinsSha256).toBe('h2');
  });

  it('treats a missing, corrupt or incomplete marker as absent', () => {
    const venv = fakeVenv();
    expect(readMarker(venv, MARKER_FILE)).toBeUndefined();
    fs.writeFileSync(path.join(venv, MARKER_FILE), '{"pinsSha256": "h", ');
    expect(readMarker(venv, MARKER_FILE)).toBeUndefined();
    fs.writeFileSync(path.join(venv, MARKER_FILE), JSON.stringify({ pinsSha256: 'h', python: '3.11.7' }));
    expect(readMarker(venv, MARKER_FILE)).toBeUndefined();
  });
});

describe('readyEntryPoint (reuse decision)', () => {
  const current = (pins: readonly string[]) => ({ pinsSha256: pinsSha256(pins), python: '3.11.7', version: '1.0', installedAt: 't' });

  it('reuses a complete venv whose marker holds the hash of the same pins', () => {
    const venv = fakeVenv(current(PINS));
    expect(readyEntryPoint(venv, MARKER_FILE, PINS, 'bin/tool')).toBe(path.join(venv, 'bin', 'tool'));
  });

  it('rebuilds when a pin changed, or when the pins were reordered', () => {
    const venv = fakeVenv(current(PINS));
    expect(readyEntryPoint(venv, MARKER_FILE, ['tool==1.0', 'dep==2.1'], 'bin/tool')).toBeUndefined();
    expect(readyEntryPoint(venv, MARKER_FILE, [...PINS].reverse(), 'bin/tool')).toBeUndefined();
  });

  it('rebuilds without a marker (an install that stopped halfway)', () => {
    expect(readyEntryPoint(fakeVenv(), MARKER_FILE, PINS, 'bin/tool')).toBeUndefined();
  });

  it('rebuilds when the entry point or the venv python is gone', () => {
    const venv = fakeVenv(current(PINS));
    expect(readyEntryPoint(venv, MARKER_FILE, PINS, 'bin/missing-tool')).toBeUndefined();
    fs.rmSync(path.join(venv, 'bin', 'python'));
    expect(readyEntryPoint(venv, MARKER_FILE, PINS, 'bin/tool')).toBeUndefined();
  });
});

describe('python version check', () => {
  it('parses the major.minor.patch line the check prints', () => {
    expect(parsePythonVersion('3.11.7\n')).toEqual({ major: 3, minor: 11 });
    expect(parsePythonVersion('3.9')).toBeUndefined();
    expect(parsePythonVersion('Python 3.11.7')).toBeUndefined();
  });

  it('accepts exactly the inclusive minor range of Python 3', () => {
    const cellProfilerRange = { min: 9, max: 11 };
    expect(pythonVersionFits('3.9.0', cellProfilerRange)).toBe(true);
    expect(pythonVersionFits('3.11.7', cellProfilerRange)).toBe(true);
    expect(pythonVersionFits('3.8.18', cellProfilerRange)).toBe(false);
    expect(pythonVersionFits('3.12.1', cellProfilerRange)).toBe(false);
    expect(pythonVersionFits('4.11.0', cellProfilerRange)).toBe(false);
    expect(pythonVersionFits('', cellProfilerRange)).toBe(false);
  });
});

describe('install lock', () => {
  it('takes over a lock whose holder process has exited', async () => {
    const lockDir = path.join(dir, 'venv.lock');
    const deadPid = spawnSync('true').pid;
    fs.mkdirSync(lockDir);
    fs.writeFileSync(path.join(lockDir, 'pid'), String(deadPid));
    const lines: string[] = [];
    const release = await acquireLock(lockDir, 'Test', (line) => lines.push(line));
    expect(lines).toEqual([`removing stale install lock of process ${deadPid}`]);
    expect(fs.readFileSync(path.join(lockDir, 'pid'), 'utf8')).toBe(String(process.pid));
    await release();
    expect(fs.existsSync(lockDir)).toBe(false);
  });

  it('waits while a live holder has it and gets it once released', async () => {
    const lockDir = path.join(dir, 'venv.lock');
    const releaseFirst = await acquireLock(lockDir, 'Test', () => undefined);
    let secondHasIt = false;
    const second = acquireLock(lockDir, 'Test', () => undefined).then((release) => {
      secondHasIt = true;
      return release;
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(secondHasIt).toBe(false);
    await releaseFirst();
    await (await second)();
    expect(secondHasIt).toBe(true);
  }, 10_000);
});
