/**
 * Reading one image set's tables for the reduce step: its Image.csv row and the per-object means and
 * distributions the summary and report use. See summary.ts for how the rows are merged.
 */
import { posix } from 'node:path';
import type { SetSummary } from '../../core/model';
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
  /**
   * The set's measurements, taken by the analysis activity: when present (and the merge asks for no
   * extra columns), the tables are not read; `sampleTables` gives them for the report's histograms.
   */
  summary?: SetSummary;
  sampleTables?: () => Promise<ImageSetTable[]>;
}

/** Exact aggregates of one measurement's finite values over one set. */
export interface Aggregate {
  n: number;
  sum: number;
  min: number;
  max: number;
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
  /** Instead of the values, when measured from a summary: their exact aggregates. */
  aggregates?: Map<string, Aggregate>;
  hasTableProblems: boolean;
}

/** A done set's measurement in the form the analysis activity records with its outcome. */
export function summaryOf(m: SetMeasurement): SetSummary {
  const distributions: SetSummary['distributions'] = [];
  for (const [series, values] of m.distributionValues) {
    if (values.length === 0) continue;
    let sum = 0;
    let min = Infinity;
    let max = -Infinity;
    for (const v of values) {
      sum += v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
    distributions.push([series, { n: values.length, sum, min, max }]);
  }
  return {
    v: 1,
    cells: [...m.cells],
    counts: { ...m.counts },
    imageMetadata: [...m.imageMetadata],
    definedColumns: [...m.definedColumns],
    distributions,
    error: m.error,
    hasTableProblems: m.hasTableProblems,
  };
}

/** The measurement a summary stands for: the same cells and counts, aggregates instead of values. */
export function measurementFromSummary(input: ImageSetResult, summary: SetSummary): SetMeasurement {
  return {
    input,
    error: summary.error,
    cells: new Map(summary.cells),
    counts: { ...summary.counts },
    imageMetadata: new Map(summary.imageMetadata),
    definedColumns: [...summary.definedColumns],
    distributionValues: new Map(),
    aggregates: new Map(summary.distributions),
    hasTableProblems: summary.hasTableProblems,
  };
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

  // The tables to read, opened all at once (their GETs overlap), then parsed one by one in order.
  const wanted = input.tables.flatMap((table) => {
    const objectName = tableObjectName(table.name);
    if (objectName === undefined || objectName === 'Experiment') return []; // Experiment.csv is key/value, not per object
    if (objectName !== 'Image' && objectFilter && !objectFilter.has(objectName)) return [];
    const opened = table.open();
    opened.catch(() => undefined); // handled where it is awaited, below
    return [{ table, objectName, opened }];
  });
  let next = 0;
  try {
    for (; next < wanted.length; next++) await measureTable(wanted[next]!);
  } finally {
    // An I/O error ends the set early: close the streams already opened for the tables not read.
    for (const rest of wanted.slice(next + 1)) void rest.opened.then((stream) => destroyStream(stream), () => undefined);
  }

  async function measureTable({ table, objectName, opened }: (typeof wanted)[number]): Promise<void> {
    try {
      if (objectName === 'Image') {
        sawImageTable = true;
        const image = await readImageTable(await opened, (column) => plan.wantsImageColumn(column));
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
        return;
      }
      const requested = plan.measurementsFor(objectName);
      const summary = await readObjectTable(
        await opened,
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


function destroyStream(stream: NodeJS.ReadableStream): void {
  if ('destroy' in stream && typeof stream.destroy === 'function') stream.destroy();
}
