import fs from 'node:fs';
import { UsageError } from '../core/errors';
import { DEFAULTS } from '../core/model';

/**
 * Read `--pipeline <file>` as text, refusing anything that is not a small text file with a message
 * naming the path and what it is instead, never its bytes: a directory, a device, a project file
 * (.cpproj is HDF5), an image, an archive or any other binary.
 */

const MAGIC: Array<[Buffer, string]> = [
  [Buffer.from([0x89, 0x48, 0x44, 0x46]), 'an HDF5 file, probably a .cpproj project: export the pipeline from CellProfiler with File > Export > Pipeline'],
  [Buffer.from([0x89, 0x50, 0x4e, 0x47]), 'a PNG image'],
  [Buffer.from('II*\0', 'latin1'), 'a TIFF image'],
  [Buffer.from('MM\0*', 'latin1'), 'a TIFF image'],
  [Buffer.from([0x1f, 0x8b]), 'a gzip archive'],
  [Buffer.from('PK\x03\x04', 'latin1'), 'a zip archive'],
];

export function readPipelineFile(file: string): string {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`--pipeline ${file}: ${code === 'ENOENT' ? 'no such file' : `cannot be read (${code ?? String(err)})`}`);
  }
  if (stat.isDirectory()) throw new UsageError(`--pipeline ${file}: is a directory, not a CellProfiler pipeline file`);
  if (!stat.isFile()) throw new UsageError(`--pipeline ${file}: is not a regular file`);
  if (stat.size > DEFAULTS.MAX_PIPELINE_BYTES) {
    throw new UsageError(
      `--pipeline ${file}: is ${(stat.size / 2 ** 20).toFixed(1)} MiB; a CellProfiler text pipeline is at most ${DEFAULTS.MAX_PIPELINE_BYTES / 2 ** 20} MiB`,
    );
  }
  const bytes = fs.readFileSync(file);
  const known = MAGIC.find(([magic]) => bytes.subarray(0, magic.length).equals(magic));
  if (known) throw new UsageError(`--pipeline ${file}: not a CellProfiler text pipeline: it is ${known[1]}`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    text = '\0';
  }
  if (text.includes('\0')) throw new UsageError(`--pipeline ${file}: not a CellProfiler text pipeline: it is a binary file (${bytes.length} bytes)`);
  return text;
}
