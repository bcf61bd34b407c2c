import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  environmentKey,
  interpreterOf,
  packageSetSha256,
  sameEnvironment,
} from '../../activities/engines/cellprofiler/environment';

describe('CellProfiler environment fingerprint', () => {
  it('hashes the package set independently of line order, case order and blank lines', () => {
    const a = packageSetSha256('numpy==1.26.4\nmatplotlib==3.8.4\nImageIO==2.37.2\n');
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(packageSetSha256('\nImageIO==2.37.2\nmatplotlib==3.8.4\n\nnumpy==1.26.4')).toBe(a);
    expect(packageSetSha256('numpy==1.26.4\nmatplotlib==3.11.2\nImageIO==2.37.2\n')).not.toBe(a);
  });

  it('tells environments apart by build, Python and packages; undefined equals only undefined', () => {
    const env = { build: '5.0.0.dev784', python: '3.9.18', packagesSha256: 'a'.repeat(64) };
    expect(sameEnvironment(env, { ...env })).toBe(true);
    expect(sameEnvironment(env, { ...env, python: '3.10.13' })).toBe(false);
    expect(sameEnvironment(env, { ...env, packagesSha256: 'b'.repeat(64) })).toBe(false);
    expect(sameEnvironment(env, { ...env, build: '5.0.0.dev785' })).toBe(false);
    expect(sameEnvironment(undefined, undefined)).toBe(true);
    expect(sameEnvironment(env, undefined)).toBe(false);
    expect(environmentKey(env)).not.toBe(environmentKey({ ...env, python: '3.10.13' }));
  });

  it('finds the interpreter from the entry point script, else the python beside it', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-interp-'));
    const fakePython = path.join(dir, 'real-python');
    fs.writeFileSync(fakePython, '');
    const withShebang = path.join(dir, 'cellprofiler');
    fs.writeFileSync(withShebang, `#!${fakePython}\nimport sys\n`);
    expect(interpreterOf(withShebang)).toBe(fakePython);
    const viaEnv = path.join(dir, 'other');
    fs.writeFileSync(viaEnv, '#!/usr/bin/env python3\n');
    expect(interpreterOf(viaEnv)).toBe(path.join(dir, 'python'));
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
