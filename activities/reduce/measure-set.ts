/**
 * Reading one image set's tables for the reduce step: its Image.csv row and the per-object means and
 * distributions the summary and report use. See summary.ts for how the rows are merged.
 */
import { posix } from 'node:path';
import { CsvError, readImageTable, readObjectTable } from './tables';

export interface ImageSetTable {
  /** File name as written by the engine, e.g. `Nuclei.csv` (a path is fine: only the base name counts). */
  name: string;
  open: () => Promise<NodeJS.ReadableStream>;
}

export interface ImageSetResult {
  key: string;
  status: 'done' | 'failed';
  metadata: Record<string, string>;
  error?: string;
  tables: ImageSetTable[];
}

export const AREA = 'AreaShape_Area';
export const MEAN_INTENSITY_PREFIX = 'Intensity_MeanIntensity_';
export const FIXED_COLUMNS = ['ImageSet_Key', 'Status', 'Error'] as const;
const MAX_ERROR_CHARS = 2000;

/** Measurements summarised by default: area and per-channel mean intensity (not MeanIntensityEdge_). */
export function isDefaultMeasurement(column: string): boolean {
  return column === AREA || column.startsWith(MEAN_INTENSITY_PREFIX);
}

/** Area first, then intensities by channel name: a stable, readable order. */
export function compareMeasurements(a: string, b: string): number {
  if (a === b) return 0;
  if (a === AREA) return -1;
  if (b === AREA) return 1;
  return a.localeCompare(b);
}

export interface SetMeasurement {
  input: ImageSetResult;
  /** Failed set's error, or table problems of a done set. */
  error: string;
  /** Output column → value (Count_*, Mean_*, raw Image.csv columns). */
  cells: Map<string, number | string>;
  counts: Record<string, number>;
  imageMetadata: Map<string, string>;
  /** Columns this set would define if it were the first done set, in summary order. */
  definedColumns: string[];
  /** `object\tmeasurement` → finite values, for the report's reservoirs. */
  distributionValues: Map<string, number[]>;
  hasTableProblems: boolean;
}

/** The table's object name (`Nuclei` for `sets/x/Nuclei.csv`), or undefined for non-CSV files. */
function tableObjectName(name: string): string | undefined {
  const base = posix.basename(name.replace(/\\/g, '/'));
  return /\.csv$/i.test(base) ? base.slice(0, -4) : undefined;
}

export function metadataColumn(key: string): string {
  return key.startsWith('Metadata_') ? key : `Metadata_${key}`;
}

export function truncate(text: string, max = MAX_ERROR_CHARS): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/** Case-insensitive lookup of `Plate`/`Well`/`Site` in the set's metadata, then Image.csv's Metadata_ columns. */
export function findMetadata(name: string, metadata: Record<string, string>, imageMetadata: Map<string, string>): string | undefined {
  const wanted = [name.toLowerCase(), `metadata_${name.toLowerCase()}`];
  for (const [key, value] of Object.entries(metadata)) if (wanted.includes(key.toLowerCase()) && value !== '') return value;
  for (const [key, value] of imageMetadata) if (wanted.includes(key.toLowerCase()) && value !== '') return value;
  return undefined;
}

export class ExtraColumnPlan {
  /** Object name → measurement columns requested as `Mean_<Object>_<Measurement>`. */
  private readonly meanRequests: { column: string; rest: string }[];
  private readonly imageColumns: Set<string>;

  constructor(readonly columns: string[]) {
    this.meanRequests = columns.filter((c) => c.startsWith('Mean_')).map((column) => ({ column, rest: column.slice('Mean_'.length) }));
    this.imageColumns = new Set(columns.filter((c) => !c.startsWith('Mean_') && !c.startsWith('Count_')));
  }

  /** Requested measurements of this object table; `Mean_Cells_Big_X` is tried as object `Cells` too, harmlessly. */
  measurementsFor(objectName: string): Set<string> {
    const prefix = `${objectName}_`;
    return new Set(this.meanRequests.filter((r) => r.rest.startsWith(prefix)).map((r) => r.rest.slice(prefix.length)));
  }

  wantsImageColumn(column: string): boolean {
    return column.startsWith('Metadata_') || this.imageColumns.has(column);
  }

  isImageColumn(column: string): boolean {
    return this.imageColumns.has(column);
  }
}

export async function measureImageSet(
  input: ImageSetResult,
  plan: ExtraColumnPlan,
  objectFilter: Set<string> | undefined,
  expectTables = true,
): Promise<SetMeasurement> {
  const measurement: SetMeasurement = {
    input,
    error: input.status === 'failed' ? (input.error ?? 'failed (no error recorded)') : '',
    cells: new Map(),
    counts: {},
    imageMetadata: new Map(),
    definedColumns: [],
    distributionValues: new Map(),
    hasTableProblems: false,
  };
  if (input.status !== 'done') return measurement;

  const problems: string[] = [];
  const imageCountColumns: string[] = [];
  const objectMeanColumns = new Map<string, string[]>();
  const objectRowCounts = new Map<string, number>();
  let sawImageTable = false;

  for (const table of input.tables) {
    const objectName = tableObjectName(table.name);
    if (objectName === undefined || objectName === 'Experiment') continue; // Experiment.csv is key/value, not per object
    try {
      if (objectName === 'Image') {
        sawImageTable = true;
        const image = await readImageTable(await table.open(), (column) => plan.wantsImageColumn(column));
        for (const [column, count] of image.counts) {
          const counted = column.slice('Count_'.length);
          if (objectFilter && !objectFilter.has(counted)) continue;
          measurement.counts[counted] = count;
          measurement.cells.set(column, count);
          imageCountColumns.push(column);
        }
        for (const [column, value] of image.values) {
          if (column.startsWith('Metadata_')) measurement.imageMetadata.set(column, value);
          if (plan.isImageColumn(column)) measurement.cells.set(column, value);
        }
        continue;
      }
      if (objectFilter && !objectFilter.has(objectName)) continue;
      const requested = plan.measurementsFor(objectName);
      const summary = await readObjectTable(
        await table.open(),
        (column) => isDefaultMeasurement(column) || requested.has(column),
        isDefaultMeasurement,
      );
      objectRowCounts.set(objectName, summary.rows);
      const defaults: string[] = [];
      for (const [column, { sum, n }] of summary.sums) {
        const outColumn = `Mean_${objectName}_${column}`;
        if (n > 0) measurement.cells.set(outColumn, sum / n);
        if (isDefaultMeasurement(column)) defaults.push(column);
      }
      defaults.sort(compareMeasurements);
      objectMeanColumns.set(objectName, defaults.map((column) => `Mean_${objectName}_${column}`));
      for (const [column, values] of summary.values) measurement.distributionValues.set(`${objectName}\t${column}`, values);
    } catch (error) {
      // A malformed CSV is this set's problem, noted in its row; I/O errors propagate so the activity retries.
      if (!(error instanceof CsvError)) throw error;
      problems.push(`${table.name}: ${error.message}`);
    }
  }

  if (!sawImageTable && expectTables) problems.push('Image.csv missing');
  // Objects without a Count_ column in Image.csv (or without Image.csv) are counted from their table.
  const fallbackCountColumns: string[] = [];
  for (const [objectName, rows] of [...objectRowCounts].sort(([a], [b]) => a.localeCompare(b))) {
    if (measurement.counts[objectName] !== undefined) continue;
    measurement.counts[objectName] = rows;
    measurement.cells.set(`Count_${objectName}`, rows);
    fallbackCountColumns.push(`Count_${objectName}`);
  }
  measurement.definedColumns = [
    ...imageCountColumns,
    ...fallbackCountColumns,
    ...[...objectMeanColumns.keys()].sort((a, b) => a.localeCompare(b)).flatMap((name) => objectMeanColumns.get(name) ?? []),
  ];
  if (problems.length > 0) {
    measurement.hasTableProblems = true;
    measurement.error = truncate(problems.join('; '));
  }
  return measurement;
}

