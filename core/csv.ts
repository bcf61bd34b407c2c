/**
 * Streaming CSV reading for CellProfiler's tables (ExportToSpreadsheet output, split per set by the
 * engine and merged by the reduce), with papaparse: about five times faster than csv-parse on these
 * tables (12 → 2 ms per 0.5 MB Nuclei.csv), which matters because every analysed set's tables are
 * read twice (split, then summarised) while CellProfiler competes for the same cores.
 *
 * Stricter than papaparse's defaults, as csv-parse was: an unterminated or malformed quote, or a row
 * whose number of fields differs from the header's, is a CsvError naming the record. A leading byte
 * order mark is removed; empty lines are skipped.
 */
import { Readable } from 'node:stream';
import Papa from 'papaparse';

export class CsvError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CsvError';
  }
}

export interface CsvReadOptions {
  /** Field delimiter; default a comma. Never guessed: a one-column table has none to guess from. */
  delimiter?: string;
}

/**
 * Calls `onRecord` for every record, the header first (index 0), one at a time: when it returns a
 * promise (a write waiting for drain), parsing pauses until it settles. Resolves with the number of
 * records after the header; rejects with a CsvError, the source's error, or what `onRecord` threw.
 */
export async function forEachCsvRecord(
  source: NodeJS.ReadableStream,
  onRecord: (record: string[], index: number) => void | Promise<void>,
  options: CsvReadOptions = {},
): Promise<number> {
  // Strings, not Buffers: papaparse would decode each chunk alone and split multi-byte characters.
  source.setEncoding('utf8');
  const chunks = source[Symbol.asyncIterator]() as AsyncIterator<string>;
  // papaparse guesses the line ending from its first chunk, and guesses wrong ('\n', leaving a '\r'
  // on every last field) when that chunk ends before the header does (a long Image.csv header, a small
  // S3 read). So the stream is read up to its first line break here and papaparse is told.
  let head = '';
  let ended = false;
  try {
    while (!head.includes('\n')) {
      const next = await chunks.next();
      if (next.done) {
        ended = true;
        break;
      }
      head += next.value;
    }
  } catch (error) {
    destroy(source);
    throw error;
  }
  const newline = lineEndingOf(head);
  const rest = Readable.from(
    (async function* () {
      yield head;
      if (ended) return;
      for (let next = await chunks.next(); !next.done; next = await chunks.next()) yield next.value;
    })(),
    { objectMode: false },
  );
  try {
    return await parseRecords(rest, newline, onRecord, options.delimiter ?? ',');
  } finally {
    destroy(source);
  }
}

/** The line ending of the first line ('\n' when the text has none yet): papaparse is told, never left to guess. */
function lineEndingOf(text: string): '\r\n' | '\n' {
  const lineBreak = text.indexOf('\n');
  return lineBreak > 0 && text[lineBreak - 1] === '\r' ? '\r\n' : '\n';
}

/** A record (0-based index, the header being 0) with another number of fields than the header. */
function fieldCountError(index: number, fields: number, headerFields: number): CsvError {
  return new CsvError(`record ${index + 1}: ${fields} fields, the header has ${headerFields}`);
}

function destroy(stream: NodeJS.ReadableStream): void {
  const destroyable = stream as NodeJS.ReadableStream & { destroy?: () => void; destroyed?: boolean };
  if (typeof destroyable.destroy === 'function' && !destroyable.destroyed) destroyable.destroy();
}

function parseRecords(
  source: Readable,
  newline: '\r\n' | '\n',
  onRecord: (record: string[], index: number) => void | Promise<void>,
  delimiter: string,
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let index = 0;
    let fields = -1;
    let settled = false;
    let parser: Papa.Parser | undefined;
    const fail = (error: unknown): void => {
      if (settled) return;
      settled = true;
      parser?.abort();
      source.destroy();
      reject(error);
    };
    source.on('error', fail);
    Papa.parse<string[]>(source, {
      delimiter,
      newline,
      skipEmptyLines: true,
      step: (result, p) => {
        parser = p;
        if (settled) return;
        const problem = result.errors[0];
        if (problem) return fail(new CsvError(`record ${index + 1}: ${problem.message}`));
        const record = result.data;
        if (index === 0) {
          if (record[0]?.startsWith('\ufeff')) record[0] = record[0].slice(1);
          fields = record.length;
        } else if (record.length !== fields) {
          return fail(fieldCountError(index, record.length, fields));
        }
        let pending: void | Promise<void>;
        try {
          pending = onRecord(record, index);
        } catch (error) {
          return fail(error);
        }
        index += 1;
        if (pending instanceof Promise) {
          p.pause();
          pending.then(
            () => {
              if (!settled) p.resume();
            },
            (error: unknown) => fail(error),
          );
        }
      },
      complete: () => {
        if (settled) return;
        settled = true;
        resolve(Math.max(0, index - 1));
      },
      error: (error: Error) => fail(error),
    });
  });
}

export interface CsvTextOptions {
  /** Trim spaces around every field (hand-written files such as platemaps). */
  trim?: boolean;
  /** Accept rows with another number of fields than the header (callers that check it themselves). */
  relaxColumnCount?: boolean;
}

/**
 * A whole CSV text (a platemap, a LoadData CSV, a table already in memory) as records, header first,
 * with the same strictness as forEachCsvRecord: malformed quotes and, unless relaxed, rows with another
 * number of fields than the header are a CsvError. A leading byte order mark is removed.
 */
export function parseCsvText(text: string, options: CsvTextOptions = {}): string[][] {
  const body = text.startsWith('\ufeff') ? text.slice(1) : text;
  const result = Papa.parse<string[]>(body, {
    delimiter: ',',
    newline: lineEndingOf(body),
    skipEmptyLines: true,
    ...(options.trim ? { transform: (value: string) => value.trim() } : {}),
  });
  const problem = result.errors[0];
  if (problem) throw new CsvError(`record ${(problem.row ?? 0) + 1}: ${problem.message}`);
  const records = result.data;
  if (!options.relaxColumnCount) {
    const fields = records[0]?.length ?? 0;
    const odd = records.findIndex((r) => r.length !== fields);
    if (odd > 0) throw fieldCountError(odd, records[odd]?.length ?? 0, fields);
  }
  return records;
}

/** A whole CSV text as one object per row, keyed by the header's column names. */
export function parseCsvObjects(text: string): Array<Record<string, string>> {
  const [header = [], ...rows] = parseCsvText(text);
  return rows.map((row) => Object.fromEntries(header.map((column, i) => [column, row[i] ?? ''])));
}
