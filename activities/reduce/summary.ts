/**
 * The reduce step's merge: turns the per-image-set ExportToSpreadsheet tables of an experiment into
 * one `summary.csv` (one row per image set) plus bounded-memory aggregates for the report.
 *
 * Memory: rows are streamed to `out` as soon as each set is measured (in input order), so memory
 * does not grow with the number of object rows. What is kept per set is small (key, plate/well/site
 * and one count per object); distributions are reservoir samples of fixed size. 100,000 sets stay
 * well within a worker's memory.
 *
 * Column set (documented choice): CSV needs its header before the first row, and a cheap pre-pass
 * over every set's headers would double the S3 reads. The columns are therefore fixed by the FIRST
 * `done` set (its `Count_*` columns and the chosen means of its object tables) plus the caller's
 * `extraColumns`. Later sets fill the columns they have and leave the rest empty; measurements that
 * only later sets have still feed the report's distributions but do not appear in summary.csv
 * (ask for them via `extraColumns` when known). Failed sets that arrive before the first done set
 * are held back (up to `maxRowsBeforeColumnsKnown`) and written once the columns are known.
 */
import { once } from 'node:events';
import { pipeline } from 'node:stream/promises';
import { Readable, type Writable } from 'node:stream';
import { stringify } from 'csv-stringify';
import { DEFAULTS } from '../../core/model';
import { seededRandom } from '../../core/random';
import { Reservoir, type DistributionSummary } from './reservoir';
import {
  compareMeasurements,
  ExtraColumnPlan,
  findMetadata,
  FIXED_COLUMNS,
  MEAN_INTENSITY_PREFIX,
  measureImageSet,
  metadataColumn,
  truncate,
  type ImageSetResult,
  type SetMeasurement,
} from './measure-set';

export type { ImageSetResult, ImageSetTable } from './measure-set';

export interface MergeOptions {
  /** Receives summary.csv; it is ended when the merge completes (destroyed if the merge fails). */
  out: Writable;
  /** Metadata keys of the experiment (e.g. `Plate`, `Well`, `Site`), one `Metadata_<k>` column each. */
  metadataKeys: string[];
  /** Only these object tables (e.g. `['Nuclei', 'Cells']`); default: every object table present. */
  objectNames?: string[];
  /**
   * Columns to add after the ones the first done set defines. `Count_<Object>`; `Mean_<Object>_<Measurement>`
   * (mean over the object table's column `<Measurement>`); anything else is copied from Image.csv's first row.
   */
  extraColumns?: string[];
  /** Image sets read at once (their table downloads overlap); rows are still written in input order. Default 8. */
  concurrency?: number;
  /** Reservoir capacity per distribution. Default 10,000. */
  sampleSize?: number;
  /** Seed of the sampling PRNG, so a report is reproducible. Default 1. */
  seed?: number;
  /** Failed sets held back while no done set has fixed the columns yet. Default 1,000. */
  maxRowsBeforeColumnsKnown?: number;
  /** Failed sets listed with their error in the stats (the rest are only counted). Default 1,000. */
  maxListedFailures?: number;
  /**
   * Whether done sets are expected to have tables (default true). False for a stage whose pipeline
   * exports none (its results are saved files): a done set without tables is then not a problem.
   */
  expectTables?: boolean;
  /** Called after every `progressEvery` sets (default 500) with the number merged so far: heartbeat here. */
  onProgress?: (setsMerged: number) => void;
  progressEvery?: number;
}

export interface PerSetCounts {
  key: string;
  status: 'done' | 'failed';
  plate?: string;
  well?: string;
  site?: string;
  /** Object name → number of objects in this set (empty for failed sets). */
  counts: Record<string, number>;
}

export interface DistributionSeries extends DistributionSummary {
  object: string;
  /** Object-table column, e.g. `AreaShape_Area` or `Intensity_MeanIntensity_DNA`. */
  measurement: string;
  /** Set for intensity measurements: the channel (image) name. */
  channel?: string;
}

export interface ReduceStats {
  /** Data rows written to summary.csv (one per image set). */
  rows: number;
  setsDone: number;
  setsFailed: number;
  /** Done sets whose tables were missing or unreadable (noted in their Error cell). */
  setsWithTableProblems: number;
  /** Objects per object name, over all sets. */
  objectTotals: Record<string, number>;
  /** Sum of objectTotals (note: Nuclei, Cells and Cytoplasm often count the same cells). */
  objectsTotal: number;
  /** summary.csv's header. */
  columns: string[];
  /** One entry per image set in input order. */
  perSet: PerSetCounts[];
  /** Failed sets with their (truncated) error, at most maxListedFailures. */
  failures: { key: string; error: string }[];
  failuresNotListed: number;
  /** Object areas and mean intensities per channel, one series per object and measurement. */
  distributions: DistributionSeries[];
}

export async function mergeImageSetTables(input: AsyncIterable<ImageSetResult> | Iterable<ImageSetResult>, options: MergeOptions): Promise<ReduceStats> {
  const concurrency = options.concurrency ?? DEFAULTS.REDUCE_READ_CONCURRENCY;
  const sampleSize = options.sampleSize ?? 10_000;
  const maxHeldBack = options.maxRowsBeforeColumnsKnown ?? 1_000;
  const maxListedFailures = options.maxListedFailures ?? 1_000;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`concurrency must be a positive integer, got ${concurrency}`);

  const plan = new ExtraColumnPlan(options.extraColumns ?? []);
  const objectFilter = options.objectNames ? new Set(options.objectNames) : undefined;
  const random = seededRandom(options.seed ?? 1);
  const reservoirs = new Map<string, Reservoir>();
  const baseColumns = [...FIXED_COLUMNS, ...options.metadataKeys.map(metadataColumn)];

  const stats: ReduceStats = {
    rows: 0,
    setsDone: 0,
    setsFailed: 0,
    setsWithTableProblems: 0,
    objectTotals: {},
    objectsTotal: 0,
    columns: [],
    perSet: [],
    failures: [],
    failuresNotListed: 0,
    distributions: [],
  };

  const csv = stringify({ header: false });
  const written = pipeline(csv, options.out);
  written.catch(() => undefined); // awaited at the end; errors also surface through csv's own 'error'

  let columns: string[] | undefined;
  const heldBack: SetMeasurement[] = [];

  const writeRecord = async (record: (string | number)[]): Promise<void> => {
    if (!csv.write(record)) await once(csv, 'drain');
  };
  const fixColumns = async (defined: string[]): Promise<string[]> => {
    const fixed = [...new Set([...baseColumns, ...defined, ...plan.columns])];
    columns = fixed;
    stats.columns = fixed;
    await writeRecord(fixed);
    return fixed;
  };
  const writeRow = async (m: SetMeasurement, header: string[]): Promise<void> => {
    const byColumn = new Map<string, string | number>([
      ['ImageSet_Key', m.input.key],
      ['Status', m.input.status],
      ['Error', m.error],
    ]);
    for (const key of options.metadataKeys) {
      const column = metadataColumn(key);
      byColumn.set(column, m.input.metadata[key] ?? m.imageMetadata.get(column) ?? '');
    }
    for (const [column, value] of m.cells) if (!byColumn.has(column)) byColumn.set(column, value);
    await writeRecord(header.map((column) => byColumn.get(column) ?? ''));
    stats.rows += 1;
  };

  const commit = async (m: SetMeasurement): Promise<void> => {
    const { input } = m;
    if (input.status === 'done') {
      stats.setsDone += 1;
      if (m.hasTableProblems) stats.setsWithTableProblems += 1;
    } else {
      stats.setsFailed += 1;
      if (stats.failures.length < maxListedFailures) stats.failures.push({ key: input.key, error: truncate(m.error) });
      else stats.failuresNotListed += 1;
    }
    for (const [objectName, count] of Object.entries(m.counts)) {
      stats.objectTotals[objectName] = (stats.objectTotals[objectName] ?? 0) + count;
      stats.objectsTotal += count;
    }
    stats.perSet.push({
      key: input.key,
      status: input.status,
      plate: findMetadata('Plate', input.metadata, m.imageMetadata),
      well: findMetadata('Well', input.metadata, m.imageMetadata),
      site: findMetadata('Site', input.metadata, m.imageMetadata),
      counts: m.counts,
    });
    for (const [series, values] of m.distributionValues) {
      let reservoir = reservoirs.get(series);
      if (!reservoir) {
        reservoir = new Reservoir(sampleSize, random);
        reservoirs.set(series, reservoir);
      }
      for (const value of values) reservoir.add(value);
    }

    let header = columns;
    if (header === undefined) {
      if (input.status === 'done') {
        header = await fixColumns(m.definedColumns);
      } else if (heldBack.length < maxHeldBack) {
        heldBack.push(m);
        return;
      } else {
        header = await fixColumns([]); // no done set in sight: settle for the fixed, metadata and extra columns
      }
      for (const held of heldBack.splice(0)) await writeRow(held, header);
    }
    await writeRow(m, header);
  };

  try {
    const progressEvery = options.progressEvery ?? 500;
    let merged = 0;
    // Node's stream map keeps input order while up to `concurrency` sets are read at once.
    const measurements = Readable.from(input).map((set: ImageSetResult) => measureImageSet(set, plan, objectFilter, options.expectTables ?? true), { concurrency });
    for await (const measurement of measurements as AsyncIterable<SetMeasurement>) {
      await commit(measurement);
      merged += 1;
      if (merged % progressEvery === 0) {
        options.onProgress?.(merged);
        // In-memory or cached inputs resolve entirely through microtasks; let timers (heartbeats) run.
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    }
    options.onProgress?.(merged);
    if (columns === undefined) {
      const header = await fixColumns([]);
      for (const held of heldBack.splice(0)) await writeRow(held, header);
    }
    csv.end();
    await written;
  } catch (error) {
    // Destroying the stringifier makes pipeline() destroy `out` too (e.g. aborting an S3 upload);
    // wait for that so the caller never sees a half-written summary still open.
    csv.destroy(error instanceof Error ? error : new Error(String(error)));
    await written.catch(() => undefined);
    throw error;
  }

  stats.distributions = [...reservoirs].map(([series, reservoir]) => {
    const [object, measurement] = series.split('\t') as [string, string];
    const channel = measurement.startsWith(MEAN_INTENSITY_PREFIX) ? measurement.slice(MEAN_INTENSITY_PREFIX.length) : undefined;
    return { object, measurement, ...(channel !== undefined ? { channel } : {}), ...reservoir.summary() };
  });
  stats.distributions.sort((a, b) => a.object.localeCompare(b.object) || compareMeasurements(a.measurement, b.measurement));
  return stats;
}
