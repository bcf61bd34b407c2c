/**
 * The reduce step's merge: turns the per-image-set ExportToSpreadsheet tables of an experiment into
 * one `summary.csv` (one row per image set) plus bounded-memory aggregates for the report.
 *
 * Memory: rows are streamed to `out` as soon as each set is measured (in input order), so memory
 * does not grow with the number of object rows, nor with the number of sets: the report keeps bars of
 * consecutive sets (at most MAX_BARS) and count sums per well (report-data.ts); distributions are
 * reservoir samples of fixed size.
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
import { CountBars, WellCountSums, type CountBar, type WellCounts } from './report-data';
import { ItemReservoir, Reservoir, type DistributionSummary } from './reservoir';
import {
  compareMeasurements,
  ExtraColumnPlan,
  findMetadata,
  FIXED_COLUMNS,
  MEAN_INTENSITY_PREFIX,
  measureImageSet,
  measurementFromSummary,
  metadataColumn,
  truncate,
  type ImageSetResult,
  type SetMeasurement,
} from './measure-set';

export type { ImageSetResult, ImageSetTable } from './measure-set';
export type { CountBar, WellCounts } from './report-data';

/** Beyond this many done sets the per-set bar chart shows consecutive blocks (one bar per block) to stay drawable. */
export const MAX_BARS = 5_000;

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
  /** Most bars in the report's per-set chart. Default MAX_BARS (5,000). */
  maxBars?: number;
  /**
   * Sets measured from their summaries whose object tables are read for the report's histograms
   * (a uniform random choice of sets, all their objects). Default REPORT_SAMPLE_SETS (250).
   */
  sampleSets?: number;
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
  /** The per-set bar chart: consecutive done sets in input order, at most MAX_BARS bars. */
  countBars: CountBar[];
  /** Done sets per bar (a power of two; the last bar may hold fewer). */
  setsPerBar: number;
  /** Object count sums per plate and well, for the plate heatmaps. */
  wells: WellCounts[];
  /** Key of the first done set (its provenance names the engine). */
  firstDoneKey: string | undefined;
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
  const countBars = new CountBars(options.maxBars ?? MAX_BARS);
  const wellSums = new WellCountSums();
  // Summaries stand for the tables only when the merge asks for nothing beyond the default columns.
  const useSummaries = plan.columns.length === 0 && objectFilter === undefined;
  // Sets measured from summaries, some of which are read in full for the histograms (own PRNG stream,
  // so sets read from their tables sample exactly as before).
  const sampledSets = new ItemReservoir<ImageSetResult>(options.sampleSets ?? DEFAULTS.REPORT_SAMPLE_SETS, seededRandom((options.seed ?? 1) + 7919));
  const reservoirFor = (series: string): Reservoir => {
    let reservoir = reservoirs.get(series);
    if (!reservoir) {
      reservoir = new Reservoir(sampleSize, random);
      reservoirs.set(series, reservoir);
    }
    return reservoir;
  };

  const stats: ReduceStats = {
    rows: 0,
    setsDone: 0,
    setsFailed: 0,
    setsWithTableProblems: 0,
    objectTotals: {},
    objectsTotal: 0,
    columns: [],
    countBars: [],
    setsPerBar: 1,
    wells: [],
    firstDoneKey: undefined,
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
    if (input.status === 'done') {
      stats.firstDoneKey ??= input.key;
      countBars.add(input.key, m.counts);
      wellSums.add(findMetadata('Plate', input.metadata, m.imageMetadata), findMetadata('Well', input.metadata, m.imageMetadata), m.counts);
    }
    if (m.aggregates) {
      for (const [series, aggregate] of m.aggregates) reservoirFor(series).addAggregate(aggregate);
      if (input.sampleTables && m.aggregates.size > 0) sampledSets.add(input);
    }
    for (const [series, values] of m.distributionValues) {
      const reservoir = reservoirFor(series);
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
    const measure = (set: ImageSetResult): Promise<SetMeasurement> =>
      set.summary && useSummaries && set.status === 'done'
        ? Promise.resolve(measurementFromSummary(set, set.summary))
        : measureImageSet(set, plan, objectFilter, options.expectTables ?? true);
    const measurements = Readable.from(input).map(measure, { concurrency });
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
    // The histograms of sets measured from summaries: every object of a uniform random choice of them.
    const sampled = Readable.from(sampledSets.sample()).map(
      async (set: ImageSetResult) => (await measureImageSet({ ...set, summary: undefined, tables: (await set.sampleTables?.()) ?? [] }, plan, objectFilter)).distributionValues,
      { concurrency },
    );
    // In the sample's order, whatever order the reads finish in: the report stays reproducible.
    for await (const values of sampled as AsyncIterable<Map<string, number[]>>) {
      for (const [series, list] of values) {
        const reservoir = reservoirs.get(series);
        if (reservoir) for (const value of list) reservoir.addToSample(value);
      }
    }
    await written;
  } catch (error) {
    // Destroying the stringifier makes pipeline() destroy `out` too (e.g. aborting an S3 upload);
    // wait for that so the caller never sees a half-written summary still open.
    csv.destroy(error instanceof Error ? error : new Error(String(error)));
    await written.catch(() => undefined);
    throw error;
  }

  stats.countBars = countBars.result();
  stats.setsPerBar = countBars.setsPerBar;
  stats.wells = wellSums.result();
  stats.distributions = [...reservoirs].map(([series, reservoir]) => {
    const [object, measurement] = series.split('\t') as [string, string];
    const channel = measurement.startsWith(MEAN_INTENSITY_PREFIX) ? measurement.slice(MEAN_INTENSITY_PREFIX.length) : undefined;
    return { object, measurement, ...(channel !== undefined ? { channel } : {}), ...reservoir.summary() };
  });
  stats.distributions.sort((a, b) => a.object.localeCompare(b.object) || compareMeasurements(a.measurement, b.measurement));
  return stats;
}
