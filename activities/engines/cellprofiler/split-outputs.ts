/**
 * Splitting one CellProfiler run's outputs into one folder per image set (see index.ts for the rules).
 */
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import { stringify, type Stringifier } from 'csv-stringify';
import { forEachCsvRecord } from '../../../core/csv';
import { settingValue, type Pipeline } from '../../../core/pipeline/cppipe';
import { spreadsheetFilePrefix } from '../../../core/pipeline/validate';
import { pathToFileURL } from 'node:url';
import { ImageSetInputError, SHARED_OUTPUTS_DIR, type EngineGrouping, type EngineImageSet, type EngineSetResult } from '../types';

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

export interface SplitResult {
  sets: EngineSetResult[];
  /** Outputs of no single set, copied under `<outDir>/@shared/` (see EngineRunResult.shared). */
  shared: string[];
}

export async function splitOutputs(
  pipeline: Pipeline,
  paths: AttemptPaths,
  sets: EngineImageSet[],
  outDir: string,
  grouping?: EngineGrouping,
): Promise<SplitResult> {
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
  if (!imageTable && tables.length > 0) {
    throw new ImageSetInputError(
      `CellProfiler wrote no Image${tableExtension} (files: ${produced.join(', ') || 'none'}); ExportToSpreadsheet must export the Image table`,
      sets.length === 1 ? sets[0].key : undefined,
    );
  }

  const setDirs = sets.map((s) => path.join(outDir, s.key));
  const sharedDir = path.join(outDir, SHARED_OUTPUTS_DIR);
  for (const dir of [...setDirs, sharedDir]) {
    await fs.promises.rm(dir, { recursive: true, force: true });
    await fs.promises.mkdir(dir, { recursive: true });
  }
  const filesBySet = sets.map(() => new Set<string>());

  // A pipeline without ExportToSpreadsheet (an illumination pipeline that only saves its functions)
  // has no Image table: its files belong to the one set, or to the group.
  const { assignments, claimedFiles } = imageTable
    ? await assignImageRows(path.join(paths.outDir, imageTable), delimiter, paths, sets)
    : { assignments: new Map<string, ImageRowAssignment>(), claimedFiles: new Map<string, Set<number>>() };

  // Non-table outputs (SaveImages, …): one set's, or shared (the group's; unattributable in a batch).
  const shared: string[] = [];
  const ownerOfFile = new Map<string, number>();
  for (const rel of produced) {
    if (tables.includes(rel)) continue;
    const owners = sets.length === 1 ? [0] : [...(claimedFiles.get(rel) ?? new Set<number>())];
    const owner = owners.length === 1 ? owners[0] : undefined;
    const dest = owner === undefined ? path.join(sharedDir, rel) : path.join(setDirs[owner], rel);
    await fs.promises.mkdir(path.dirname(dest), { recursive: true });
    await fs.promises.copyFile(path.join(paths.outDir, rel), dest);
    if (owner === undefined) shared.push(rel);
    else {
      filesBySet[owner].add(rel);
      ownerOfFile.set(rel, owner);
    }
  }

  const locate = locationRewriter(paths, sets, grouping, ownerOfFile);
  const seenNames = new Set<string>();
  for (const table of tables) {
    const name = tableName(table);
    if (seenNames.has(name)) throw new Error(`CellProfiler wrote two tables named ${name}; cannot place both per set`);
    seenNames.add(name);
    const targets = setDirs.map((d) => path.join(d, name));
    const globalNumbers = sets.every((s) => s.imageNumber !== undefined);
    await splitTable(path.join(paths.outDir, table), targets, assignments, delimiter, globalNumbers, table === imageTable ? locate : undefined);
    filesBySet.forEach((files) => files.add(name));
  }

  return { sets: sets.map((set, index) => ({ key: set.key, files: [...filesBySet[index]].sort() })), shared: shared.sort() };
}

/**
 * Rewrites the Image table's path columns of one row from this attempt's scratch folders to the
 * durable locations: inputs to their `sourceUri` (PathName_X: its folder; URL_X and
 * Metadata_FileLocation: the file), saved outputs to where they will be uploaded.
 */
type LocationRewrite = (column: string, value: string, setIndex: number) => string;

function locationRewriter(
  paths: AttemptPaths,
  sets: EngineImageSet[],
  grouping: EngineGrouping | undefined,
  ownerOfFile: Map<string, number>,
): LocationRewrite | undefined {
  if (!sets.some((s) => s.files.some((f) => f.sourceUri)) && !sets.some((s) => s.outputUri)) return undefined;
  const roots = [paths.inputDir];
  const outRoots = [paths.outDir];
  try {
    roots.push(fs.realpathSync(paths.inputDir));
    outRoots.push(fs.realpathSync(paths.outDir));
  } catch {
    // The folders exist while the attempt runs; without realpath the plain paths still match.
  }
  /** Local file (or its file:// URL) → durable URI, per set. */
  const byLocal = sets.map((set, index) => {
    const map = new Map<string, { uri: string; channel: string }>();
    for (const f of set.files) {
      if (!f.sourceUri) continue;
      for (const root of roots) {
        const local = path.join(root, setFolderName(index), path.basename(f.path));
        map.set(local, { uri: f.sourceUri, channel: f.channel });
        map.set(pathToFileURL(local).href, { uri: f.sourceUri, channel: f.channel });
      }
    }
    return map;
  });
  const outputUriOf = (dir: string): string | undefined => {
    for (const root of outRoots) {
      const rel = path.relative(root, path.resolve(dir));
      if (rel.startsWith('..') || path.isAbsolute(rel)) continue;
      return rel;
    }
    return undefined;
  };
  const parentUri = (uri: string): string => uri.slice(0, uri.lastIndexOf('/'));
  return (column, value, setIndex) => {
    if (value === '') return value;
    const local = byLocal[setIndex];
    if (/^(Objects)?URL_/.test(column) || column === 'Metadata_FileLocation') {
      return local?.get(value)?.uri ?? value;
    }
    const pathName = /^(Objects)?PathName_(.+)$/.exec(column);
    if (!pathName) return value;
    const channel = pathName[1] ? `Objects:${pathName[2]}` : pathName[2];
    const file = sets[setIndex]?.files.find((f) => f.channel === channel);
    if (file?.sourceUri) {
      const inputDirs = roots.map((root) => path.join(root, setFolderName(setIndex)));
      if (inputDirs.includes(path.resolve(value))) return parentUri(file.sourceUri);
    }
    // A saved output's folder: where the set's (or the group's) files are uploaded.
    const rel = outputUriOf(value);
    if (rel !== undefined) {
      const owner = [...ownerOfFile.entries()].find(([f, o]) => o === setIndex && path.dirname(f) === (rel === '' ? '.' : rel));
      const base = owner ? sets[setIndex]?.outputUri : grouping?.outputUri;
      if (base) return rel === '' ? base.replace(/\/$/, '') : `${base.replace(/\/$/, '')}/${rel.split(path.sep).join('/')}`;
    }
    return value;
  };
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

  let header: string[] = [];
  await forEachCsvRecord(fs.createReadStream(imageTablePath), (record, index) => {
    if (index === 0) {
      header = record;
      return;
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
  }, { delimiter });
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
 *
 * Other columns holding image numbers (the second image of a relationship, TrackObjects'
 * `…ParentImageNumber…`) are renumbered too when they point at a set of this run: always within the
 * set, and across sets (a track through a group) when every set has its own global number.
 */
async function splitTable(
  source: string,
  targets: string[],
  assignments: Map<string, ImageRowAssignment>,
  delimiter: string,
  globalNumbers: boolean,
  locate?: LocationRewrite,
): Promise<void> {
  const writers: { stringifier: Stringifier; file: fs.WriteStream }[] = targets.map((target) => {
    const stringifier = stringify({ delimiter, record_delimiter: 'windows' });
    const file = fs.createWriteStream(target);
    stringifier.pipe(file);
    return { stringifier, file };
  });
  // Writes a record; a promise only when that writer's buffer is full (parsing pauses for it, which
  // costs papaparse a re-parse of the rest of its chunk, so not for every record).
  const drains: Promise<unknown>[] = [];
  const write = (index: number, record: string[]): void => {
    const { stringifier } = writers[index];
    if (!stringifier.write(record)) drains.push(once(stringifier, 'drain'));
  };
  const drained = (): Promise<void> | undefined => (drains.length === 0 ? undefined : Promise.all(drains.splice(0)).then(() => undefined));

  let header: string[] | undefined;
  let numberColumns: number[] = [];
  let routeColumn = -1;
  const route = (record: string[]): Promise<void> | undefined => {
    if (!header) {
      header = record;
      const plain = header.indexOf('ImageNumber');
      const first = header.indexOf('First Image Number');
      const second = header.indexOf('Second Image Number');
      const parents = header.flatMap((column, i) => (/ParentImageNumber/.test(column) ? [i] : []));
      if (plain >= 0) {
        routeColumn = plain;
        numberColumns = [plain, ...parents];
      } else if (first >= 0) {
        routeColumn = first;
        numberColumns = second >= 0 ? [first, second] : [first];
      }
      for (let i = 0; i < writers.length; i++) write(i, header);
      return drained();
    }
    if (routeColumn < 0) {
      for (let i = 0; i < writers.length; i++) write(i, record);
      return drained();
    }
    const assignment = assignments.get(record[routeColumn]);
    if (!assignment) throw new Error(`${path.basename(source)}: row for unknown ImageNumber ${record[routeColumn]}`);
    const renumbered = [...record];
    for (const column of numberColumns) {
      const other = assignments.get(record[column]);
      // Numbers restarting at 1 per set (no global numbers) cannot point across sets; keep such a
      // number rather than invent one.
      if (other && (other.setIndex === assignment.setIndex || globalNumbers)) renumbered[column] = String(other.localNumber);
    }
    if (locate && header) {
      for (let i = 0; i < header.length; i++) renumbered[i] = locate(header[i] ?? '', renumbered[i] ?? '', assignment.setIndex);
    }
    write(assignment.setIndex, renumbered);
    return drained();
  };
  try {
    await forEachCsvRecord(fs.createReadStream(source), route, { delimiter });
  } finally {
    for (const { stringifier } of writers) stringifier.end();
    await Promise.all(writers.map(({ file }) => finished(file)));
  }
}

