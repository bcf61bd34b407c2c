/**
 * Splitting one CellProfiler run's outputs into one folder per image set (see index.ts for the rules).
 */
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import { parse } from 'csv-parse';
import { stringify, type Stringifier } from 'csv-stringify';
import { settingValue, type Pipeline } from '../../../core/pipeline/cppipe';
import { spreadsheetFilePrefix } from '../../../core/pipeline/validate';
import { ImageSetInputError, type EngineImageSet, type EngineSetResult } from '../types';

/** The folders of one attempt (see index.ts). */
export interface AttemptPaths {
  root: string;
  inputDir: string;
  fileList: string;
  outDir: string;
  tmpDir: string;
  doneFile: string;
}

export function setFolderName(index: number): string {
  return `s${String(index).padStart(5, '0')}`;
}

// ---------------------------------------------------------------------------------------------
// Splitting outputs per image set

interface ImageRowAssignment {
  setIndex: number;
  /** ImageNumber within the set's own folder (1-based). */
  localNumber: number;
}

async function listFiles(dir: string): Promise<string[]> {
  const entries = await fs.promises.readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

function tableDelimiter(pipeline: Pipeline): string {
  const exporter = pipeline.modules.find((m) => m.enabled && m.name === 'ExportToSpreadsheet');
  return exporter && settingValue(exporter, 'Select the column delimiter') === 'Tab' ? '\t' : ',';
}

export async function splitOutputs(
  pipeline: Pipeline,
  paths: AttemptPaths,
  sets: EngineImageSet[],
  outDir: string,
): Promise<EngineSetResult[]> {
  const prefix = spreadsheetFilePrefix(pipeline);
  const delimiter = tableDelimiter(pipeline);
  const tableExtension = delimiter === '\t' ? '.txt' : '.csv';
  const produced = await listFiles(paths.outDir);
  const tables = produced.filter((f) => f.toLowerCase().endsWith(tableExtension));
  const tableName = (rel: string) => {
    const base = path.basename(rel);
    return prefix && base.startsWith(prefix) ? base.slice(prefix.length) : base;
  };
  const imageTable = tables.find((t) => tableName(t) === `Image${tableExtension}`);
  if (!imageTable) {
    throw new ImageSetInputError(
      `CellProfiler wrote no Image${tableExtension} (files: ${produced.join(', ') || 'none'}); ExportToSpreadsheet must export the Image table`,
      sets.length === 1 ? sets[0].key : undefined,
    );
  }

  const setDirs = sets.map((s) => path.join(outDir, s.key));
  for (const dir of setDirs) {
    await fs.promises.rm(dir, { recursive: true, force: true });
    await fs.promises.mkdir(dir, { recursive: true });
  }
  const filesBySet = sets.map(() => new Set<string>());

  const { assignments, claimedFiles } = await assignImageRows(path.join(paths.outDir, imageTable), delimiter, paths, sets);

  const seenNames = new Set<string>();
  for (const table of tables) {
    const name = tableName(table);
    if (seenNames.has(name)) throw new Error(`CellProfiler wrote two tables named ${name}; cannot place both per set`);
    seenNames.add(name);
    const targets = setDirs.map((d) => path.join(d, name));
    await splitTable(path.join(paths.outDir, table), targets, assignments, delimiter);
    filesBySet.forEach((files) => files.add(name));
  }

  // Non-table outputs (SaveImages, …).
  for (const rel of produced) {
    if (tables.includes(rel)) continue;
    const owners = sets.length === 1 ? [0] : [...(claimedFiles.get(rel) ?? new Set<number>())];
    if (owners.length !== 1) continue;
    const owner = owners[0];
    const dest = path.join(setDirs[owner], rel);
    await fs.promises.mkdir(path.dirname(dest), { recursive: true });
    await fs.promises.copyFile(path.join(paths.outDir, rel), dest);
    filesBySet[owner].add(rel);
  }

  return sets.map((set, index) => ({ key: set.key, files: [...filesBySet[index]].sort() }));
}

/**
 * Reads Image.csv and decides which of our sets each CellProfiler image set (row) belongs to, from
 * the folders its PathName_* columns point at. Also collects which output files each row names.
 */
async function assignImageRows(
  imageTablePath: string,
  delimiter: string,
  paths: AttemptPaths,
  sets: EngineImageSet[],
): Promise<{ assignments: Map<string, ImageRowAssignment>; claimedFiles: Map<string, Set<number>> }> {
  const inputRoots = [paths.inputDir, await fs.promises.realpath(paths.inputDir)];
  const outputRoots = [paths.outDir, await fs.promises.realpath(paths.outDir)];
  const assignments = new Map<string, ImageRowAssignment>();
  const claimedFiles = new Map<string, Set<number>>();
  const rowsPerSet = sets.map(() => 0);

  const parser = fs.createReadStream(imageTablePath).pipe(parse({ delimiter, relax_quotes: true }));
  let header: string[] | undefined;
  for await (const record of parser as AsyncIterable<string[]>) {
    if (!header) {
      header = record;
      continue;
    }
    const row = new Map(header.map((column, i) => [column, record[i] ?? '']));
    const imageNumber = row.get('ImageNumber');
    if (imageNumber === undefined) throw new Error('Image table has no ImageNumber column');
    const owners = new Set<number>();
    for (const [column, value] of row) {
      if (!column.startsWith('PathName_') || value === '') continue;
      const setIndex = setIndexOfPath(value, inputRoots);
      if (setIndex !== undefined) owners.add(setIndex);
    }
    if (owners.size !== 1) {
      throw new Error(
        `CellProfiler image set ${imageNumber} ${owners.size === 0 ? 'names none of our input folders' : 'mixes files of several image sets'} in its PathName_ columns; cannot split outputs per set`,
      );
    }
    const [setIndex] = owners;
    if (setIndex >= sets.length) throw new Error(`CellProfiler image set ${imageNumber} points at an unknown input folder`);
    rowsPerSet[setIndex] += 1;
    // cpflow's number for the set when given (one field of view makes one CellProfiler image set;
    // should a set ever yield several rows, they follow it), else 1, 2, … within the set's folder.
    const wanted = sets[setIndex].imageNumber;
    assignments.set(imageNumber, { setIndex, localNumber: wanted === undefined ? rowsPerSet[setIndex] : wanted + rowsPerSet[setIndex] - 1 });

    // Output files named by this row (FileName_X + PathName_X, ObjectsFileName_X + ObjectsPathName_X).
    for (const [column, fileName] of row) {
      const match = /^(Objects)?FileName_(.+)$/.exec(column);
      if (!match || fileName === '') continue;
      const dir = row.get(`${match[1] ?? ''}PathName_${match[2]}`);
      if (!dir) continue;
      for (const root of outputRoots) {
        const rel = path.relative(root, path.resolve(dir, fileName));
        if (!rel.startsWith('..') && !path.isAbsolute(rel)) {
          const owners = claimedFiles.get(rel) ?? new Set<number>();
          owners.add(setIndex);
          claimedFiles.set(rel, owners);
          break;
        }
      }
    }
  }
  const missing = sets.filter((_, i) => rowsPerSet[i] === 0);
  if (missing.length > 0) {
    throw new ImageSetInputError(
      `CellProfiler made no image set from the files of ${missing.map((s) => s.key).join(', ')} (do the pipeline's NamesAndTypes rules match these file names?)`,
      missing.length === 1 && sets.length === 1 ? missing[0].key : undefined,
    );
  }
  return { assignments, claimedFiles };
}

function setIndexOfPath(dir: string, inputRoots: string[]): number | undefined {
  for (const root of inputRoots) {
    const rel = path.relative(root, path.resolve(dir));
    if (rel.startsWith('..') || path.isAbsolute(rel) || rel === '') continue;
    const first = rel.split(path.sep)[0];
    const match = /^s(\d{5})$/.exec(first);
    if (match) return Number(match[1]);
  }
  return undefined;
}

/**
 * Streams one table into per-set files. Rows go to the set their image number belongs to, with the
 * image number renumbered; tables without image numbers are copied whole into every set.
 */
async function splitTable(
  source: string,
  targets: string[],
  assignments: Map<string, ImageRowAssignment>,
  delimiter: string,
): Promise<void> {
  const writers: { stringifier: Stringifier; file: fs.WriteStream }[] = targets.map((target) => {
    const stringifier = stringify({ delimiter, record_delimiter: 'windows' });
    const file = fs.createWriteStream(target);
    stringifier.pipe(file);
    return { stringifier, file };
  });
  const write = async (index: number, record: string[]) => {
    const { stringifier } = writers[index];
    if (!stringifier.write(record)) await once(stringifier, 'drain');
  };

  const parser = fs.createReadStream(source).pipe(parse({ delimiter, relax_quotes: true }));
  let header: string[] | undefined;
  let numberColumns: number[] = [];
  let routeColumn = -1;
  try {
    for await (const record of parser as AsyncIterable<string[]>) {
      if (!header) {
        header = record;
        const plain = header.indexOf('ImageNumber');
        const first = header.indexOf('First Image Number');
        const second = header.indexOf('Second Image Number');
        if (plain >= 0) {
          routeColumn = plain;
          numberColumns = [plain];
        } else if (first >= 0) {
          routeColumn = first;
          numberColumns = second >= 0 ? [first, second] : [first];
        }
        for (let i = 0; i < writers.length; i++) await write(i, header);
        continue;
      }
      if (routeColumn < 0) {
        for (let i = 0; i < writers.length; i++) await write(i, record);
        continue;
      }
      const assignment = assignments.get(record[routeColumn]);
      if (!assignment) throw new Error(`${path.basename(source)}: row for unknown ImageNumber ${record[routeColumn]}`);
      const renumbered = [...record];
      for (const column of numberColumns) {
        const other = assignments.get(record[column]);
        // A relationship to an image set of another batch member cannot exist (sets are not
        // grouped together); keep the number if it ever does rather than invent one.
        if (other && other.setIndex === assignment.setIndex) renumbered[column] = String(other.localNumber);
      }
      await write(assignment.setIndex, renumbered);
    }
  } finally {
    for (const { stringifier } of writers) stringifier.end();
    await Promise.all(writers.map(({ file }) => finished(file)));
  }
}

