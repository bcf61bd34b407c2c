/**
 * Streaming readers for CellProfiler ExportToSpreadsheet CSVs. Columns are always looked up by
 * header name: real files have 100+ columns, Image.csv is alphabetical (ImageNumber is not first),
 * and other engines may order columns differently.
 */
import { CsvError, forEachCsvRecord as forEachRecord } from '../../core/csv';

export { CsvError };

/**
 * Numeric value of one CSV cell, or `undefined` when it is not a finite number. CellProfiler writes
 * `nan`, `inf`, `-inf` and empty cells for undefined measurements; `Number('')` would be 0, hence the
 * explicit empty check. Non-finite values would poison a mean, so they are treated as missing.
 */
export function finiteNumber(cell: string | undefined): number | undefined {
  if (cell === undefined) return undefined;
  const trimmed = cell.trim();
  if (trimmed === '') return undefined;
  const value = Number(trimmed);
  return Number.isFinite(value) ? value : undefined;
}

/**
 * Calls `onHeader` once with the header row, then `onRow` for every data row, parsing the stream
 * incrementally (one record in memory at a time). Resolves with the number of data rows.
 * Parse errors surface as CsvError; stream errors (e.g. S3) as themselves.
 */
export async function forEachCsvRecord(
  source: NodeJS.ReadableStream,
  onHeader: (header: string[]) => void,
  onRow: (row: string[]) => void,
): Promise<number> {
  let sawHeader = false;
  const rows = await forEachRecord(source, (record, index) => {
    if (index === 0) {
      sawHeader = true;
      onHeader(record);
    } else {
      onRow(record);
    }
  });
  if (!sawHeader) onHeader([]);
  return rows;
}

export interface ImageTableSummary {
  /** `Count_<Object>` → count, summed over the table's rows (one row per image in practice). */
  counts: Map<string, number>;
  /** First row's value of every column whose name is in `wantedColumns` (e.g. `Metadata_Well`). */
  values: Map<string, string>;
  rows: number;
}

/** Reads Image.csv: all `Count_*` columns plus the requested raw columns of the first row. */
export async function readImageTable(
  source: NodeJS.ReadableStream,
  wantedColumn: (column: string) => boolean,
): Promise<ImageTableSummary> {
  const counts = new Map<string, number>();
  const values = new Map<string, string>();
  let countColumns: { name: string; index: number }[] = [];
  let valueColumns: { name: string; index: number }[] = [];
  let firstRow = true;
  const rows = await forEachCsvRecord(
    source,
    (header) => {
      countColumns = header.flatMap((name, index) => (name.startsWith('Count_') ? [{ name, index }] : []));
      valueColumns = header.flatMap((name, index) => (wantedColumn(name) ? [{ name, index }] : []));
    },
    (row) => {
      for (const { name, index } of countColumns) {
        const value = finiteNumber(row[index]);
        if (value !== undefined) counts.set(name, (counts.get(name) ?? 0) + value);
      }
      if (firstRow) {
        for (const { name, index } of valueColumns) values.set(name, row[index] ?? '');
        firstRow = false;
      }
    },
  );
  return { counts, values, rows };
}

export interface ObjectTableSummary {
  rows: number;
  /** Measurement column → sum and number of finite values. */
  sums: Map<string, { sum: number; n: number }>;
  /** Measurement column → every finite value, for the measurements asked to be kept. */
  values: Map<string, number[]>;
}

/**
 * Reads one object table (Nuclei.csv, …), accumulating sums for the columns `measure` selects and
 * keeping raw values for those `keepValues` selects (the report's distributions).
 */
export async function readObjectTable(
  source: NodeJS.ReadableStream,
  measure: (column: string) => boolean,
  keepValues: (column: string) => boolean,
): Promise<ObjectTableSummary> {
  const sums = new Map<string, { sum: number; n: number }>();
  const values = new Map<string, number[]>();
  let measured: { name: string; index: number; accumulator: { sum: number; n: number }; kept?: number[] }[] = [];
  const rows = await forEachCsvRecord(
    source,
    (header) => {
      measured = header.flatMap((name, index) => {
        if (!measure(name)) return [];
        const accumulator = { sum: 0, n: 0 };
        sums.set(name, accumulator);
        let kept: number[] | undefined;
        if (keepValues(name)) {
          kept = [];
          values.set(name, kept);
        }
        return [{ name, index, accumulator, kept }];
      });
    },
    (row) => {
      for (const column of measured) {
        const value = finiteNumber(row[column.index]);
        if (value === undefined) continue;
        column.accumulator.sum += value;
        column.accumulator.n += 1;
        column.kept?.push(value);
      }
    },
  );
  return { rows, sums, values };
}
