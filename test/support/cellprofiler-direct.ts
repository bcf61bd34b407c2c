import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'csv-parse/sync';
import execa from 'execa';
import { HEADLESS_ENV } from '../../core/cellprofiler';

/**
 * CellProfiler run directly (no cpflow in between) on files laid out by the test, and the column by
 * column comparison of its tables with cpflow's per-set tables: the reference every grouped, staged,
 * LoadData and plugin test checks against.
 */

export type Row = Record<string, string>;

export function readTable(file: string): Row[] {
  return parse(fs.readFileSync(file), { columns: true }) as Row[];
}

export interface DirectRun {
  outDir: string;
  table: (name: string) => Row[];
}

export async function runCellProfilerDirectly(
  executable: string,
  workDir: string,
  o: { pipeline: string; files?: string[]; dataFile?: string; pluginsDir?: string },
): Promise<DirectRun> {
  const outDir = path.join(workDir, 'out');
  fs.mkdirSync(outDir, { recursive: true });
  const args = ['-c', '-r', '-p', o.pipeline, '-o', outDir, '-t', workDir, '-d', path.join(workDir, 'done.txt'), '-e', 'imageio_reader'];
  if (o.files) {
    const list = path.join(workDir, 'files.txt');
    fs.writeFileSync(list, `${o.files.join('\n')}\n`);
    args.push('--file-list', list);
  }
  if (o.dataFile) args.push('--data-file', o.dataFile);
  if (o.pluginsDir) args.push('--plugins-directory', o.pluginsDir);
  const result = await execa(executable, args, { reject: false, env: { ...process.env, ...HEADLESS_ENV }, stdin: 'ignore' });
  const done = fs.existsSync(path.join(workDir, 'done.txt')) ? fs.readFileSync(path.join(workDir, 'done.txt'), 'utf8').trim() : 'no done file';
  if (done !== 'Complete') throw new Error(`direct CellProfiler run failed (${done}):\n${result.stderr.split('\n').slice(-20).join('\n')}`);
  return { outDir, table: (name) => readTable(path.join(outDir, `${name}.csv`)) };
}

/**
 * Columns that may differ between cpflow and a direct run of the same pipeline on the same files:
 * timings, where the files were (cpflow names their S3 locations, a direct run its local folders;
 * ImageSet_ImageSet encodes those paths) and ImageNumber (cpflow numbers each set by its id).
 */
export const NOT_COMPARED = [/^ExecutionTime_/, /^PathName_/, /^URL_/, /^ObjectsPathName_/, /^ObjectsURL_/, /^Metadata_FileLocation$/, /^ImageSet_ImageSet$/, /^ImageNumber$/];

export const compared = (column: string, extra: RegExp[] = []): boolean => ![...NOT_COMPARED, ...extra].some((re) => re.test(column));

/** Every compared column of `actual` equals `expected` exactly (same columns, same strings). */
export function expectSameRow(actual: Row, expected: Row, what: string, extra: RegExp[] = []): void {
  const a = Object.keys(actual).filter((c) => compared(c, extra)).sort();
  const e = Object.keys(expected).filter((c) => compared(c, extra)).sort();
  expect({ what, columns: a }).toEqual({ what, columns: e });
  const differing = e.filter((c) => actual[c] !== expected[c]).map((c) => `${c}: cpflow ${actual[c]} vs CellProfiler ${expected[c]}`);
  expect({ what, differing }).toEqual({ what, differing: [] });
}

/** Object tables: the same rows in the same order, every compared column equal. */
export function expectSameObjects(actual: Row[], expected: Row[], what: string): void {
  expect({ what, rows: actual.length }).toEqual({ what, rows: expected.length });
  actual.forEach((row, i) => expectSameRow(row, expected[i] as Row, `${what} row ${i + 1}`));
}

/**
 * The CellProfiler a suite runs (`npm test` installs it and sets CPFLOW_CELLPROFILER), or why the
 * suite skips: warned once under the suite's name, with `maybe` as `it.skip` then, so a machine
 * without CellProfiler reports the suite skipped with its reason instead of passing it.
 */
export function cellProfilerForSuite(suite: string): { executable: string | undefined; skipReason: string | undefined; maybe: jest.It } {
  const executable = process.env.CPFLOW_CELLPROFILER;
  const skipReason = !executable
    ? `CellProfiler is not installed (${process.env.CPFLOW_CELLPROFILER_UNAVAILABLE ?? 'CPFLOW_CELLPROFILER unset; npm test installs it unless CPFLOW_SKIP_CELLPROFILER=1'})`
    : undefined;
  if (skipReason) console.warn(`SKIPPED ${suite}: ${skipReason}`);
  return { executable, skipReason, maybe: skipReason ? it.skip : it };
}
