import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { imageLimitProblem, pixelProblem, readImageHeader, sizeProblem } from '../../core/image-limits';
import { UsageError } from '../../core/errors';
import { GROUPING_PRESETS, groupFiles } from '../../core/grouping';
import { checksumMismatch } from '../../activities/analyze-batch';
import { readPipelineFile } from '../../starter/pipeline-file';
import { pause } from '../../starter/watch';
import { declaredSizeTiff } from '../fixtures/big-images';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-input-checks-'));
const limits = { CPFLOW_MAX_IMAGE_PIXELS: 4096 * 4096, CPFLOW_MAX_IMAGE_BYTES: 1024 * 1024 };

describe('per-image limits', () => {
  it('reads the declared size of a 2 GB-decoded image from its header without decoding it', async () => {
    const file = path.join(dir, 'huge.tif');
    fs.writeFileSync(file, declaredSizeTiff(23170, 23170));
    expect(fs.statSync(file).size).toBeLessThan(1024);
    const started = Date.now();
    expect(await readImageHeader(file)).toMatchObject({ width: 23170, height: 23170, format: 'tiff' });
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(await imageLimitProblem(file, limits)).toBe(
      'is 23170×23170 pixels (536.8 Mpx), above the limit of 16.8 Mpx per image (CPFLOW_MAX_IMAGE_PIXELS)',
    );
  });

  it('passes an image within the limits and names file sizes over them', async () => {
    const file = path.join(dir, 'small.png');
    await sharp({ create: { width: 64, height: 48, channels: 3, background: '#000' } }).png().toFile(file);
    expect(await imageLimitProblem(file, limits)).toBeUndefined();
    expect(pixelProblem({ width: 4096, height: 4096, pages: 1, format: 'tiff' }, limits)).toBeUndefined();
    expect(pixelProblem({ width: 4097, height: 4096, pages: 1, format: 'tiff' }, limits)).toMatch(/4097×4096 pixels/);
    expect(sizeProblem(3 * 1024 * 1024, limits)).toBe('is 3.0 MiB, above the limit of 1.0 MiB per image (CPFLOW_MAX_IMAGE_BYTES)');
  });

  it('leaves files it cannot read as images to the engine, which names the problem', async () => {
    const file = path.join(dir, 'text.tif');
    fs.writeFileSync(file, 'not an image');
    expect(await readImageHeader(file)).toBeUndefined();
    expect(await imageLimitProblem(file, limits)).toBeUndefined();
  });
});

describe('input checksums', () => {
  it('compares sha256 checksums with the bytes and etags with what S3 returned', () => {
    expect(checksumMismatch('sha256:aa', { sha256: 'aa' })).toBeUndefined();
    expect(checksumMismatch('sha256:aa', { sha256: 'bb' })).toBe('sha256:bb');
    expect(checksumMismatch('etag:e1', { sha256: 'x', etag: 'e1' })).toBeUndefined();
    expect(checksumMismatch('etag:e1', { sha256: 'x', etag: 'e2' })).toBe('etag:e2');
    expect(checksumMismatch('md5:zz', { sha256: 'x' })).toBeUndefined();
  });
});

describe('--pipeline files', () => {
  it('names the path and what it is instead, never its bytes', () => {
    const binary = path.join(dir, 'random.bin');
    fs.writeFileSync(binary, Buffer.from([0x00, 0xff, 0xfe, 0x10, 0x00, 0x41]));
    const project = path.join(dir, 'analysis.cpproj');
    fs.writeFileSync(project, Buffer.concat([Buffer.from([0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(32)]));
    const big = path.join(dir, 'big.cppipe');
    fs.writeFileSync(big, Buffer.alloc(11 * 1024 * 1024, 0x41));
    const cases: Array<[string, string]> = [
      [dir, `--pipeline ${dir}: is a directory, not a CellProfiler pipeline file`],
      [binary, `--pipeline ${binary}: not a CellProfiler text pipeline: it is a binary file (6 bytes)`],
      [project, `--pipeline ${project}: not a CellProfiler text pipeline: it is an HDF5 file, probably a .cpproj project`],
      [big, `--pipeline ${big}: is 11.0 MiB; a CellProfiler text pipeline is at most 10 MiB`],
      [path.join(dir, 'missing.cppipe'), `--pipeline ${path.join(dir, 'missing.cppipe')}: no such file`],
    ];
    for (const [file, message] of cases) {
      let error: unknown;
      try {
        readPipelineFile(file);
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(UsageError);
      expect((error as Error).message.startsWith(message)).toBe(true);
      expect((error as Error).message).not.toMatch(/[\u0000\ufffd]/);
    }
  });
});

describe('--skip-incomplete', () => {
  const files = ['P1_A01_s1_wDNA.tif', 'P1_A01_s1_wActin.tif', 'P1_A02_s1_wDNA.tif', 'P1_A03_s1_wActin.tif', 'P1_A04_s1_wDNA.tif', 'P1_A04_s1_wActin.tif'];
  const rule = GROUPING_PRESETS.synthetic!.rule;

  it('without it, refuses naming each incomplete set and pointing at the option', () => {
    expect(() => groupFiles(files, (f) => f, rule, ['DNA', 'Actin'])).toThrow(
      'image set P1-A02-s1 lacks channel Actin; image set P1-A03-s1 lacks channel DNA (channels found in the file names: Actin, DNA; needed: DNA, Actin); --skip-incomplete registers the complete sets only',
    );
  });

  it('with it, keeps the complete sets and lists the others with what they lack', () => {
    const r = groupFiles(files, (f) => f, rule, ['DNA', 'Actin'], { skipIncomplete: true });
    expect(r.sets.map((s) => s.key)).toEqual(['P1-A01-s1', 'P1-A04-s1']);
    expect(r.incomplete).toEqual([
      { key: 'P1-A02-s1', missing: ['Actin'] },
      { key: 'P1-A03-s1', missing: ['DNA'] },
    ]);
  });
});

describe('the watcher’s poll pause', () => {
  it('leaves no abort listener behind (no MaxListenersExceededWarning after many polls)', async () => {
    const stop = new AbortController();
    const warnings: string[] = [];
    const onWarning = (w: Error): void => {
      warnings.push(w.name);
    };
    process.on('warning', onWarning);
    for (let i = 0; i < 25; i++) await pause(1, stop.signal);
    await new Promise((r) => setImmediate(r));
    process.off('warning', onWarning);
    expect(warnings).not.toContain('MaxListenersExceededWarning');
    const started = Date.now();
    const waiting = pause(60_000, stop.signal);
    stop.abort();
    await waiting;
    expect(Date.now() - started).toBeLessThan(1_000);
  });
});
