import { Readable } from 'node:stream';
import { allImageSets, applyImageSetOutcomes, db, getExperiment, type ImageSetRow } from '../../core/db';
import type { ImageSetOutcome } from '../../core/model';
import { layout, putBytes } from '../../core/s3';
import { noopTables } from '../../activities/engines/noop';
import { ExtraColumnPlan, measureImageSet, summaryOf } from '../../activities/reduce/measure-set';
import { registerNoopExperiment } from './fixtures';

/**
 * A reduce-only measurement needs an experiment whose every set is analysed, without spending an hour
 * analysing 100,000 sets: write exactly the tables the no-op engine would (same text) into S3 and
 * mirror the outcomes (with the summaries the analysis activity records) into MariaDB as the sync
 * activity would. The reduce then runs as in production.
 */

const PAGE = 500;
const PUT_CONCURRENCY = 48;

export async function seedAnalysedExperiment(name: string, sets: number, log: (line: string) => void): Promise<{ experimentId: number; seconds: number }> {
  const started = Date.now();
  const { experimentId } = await registerNoopExperiment(name, sets);
  const pool = await db();
  const e = await getExperiment(pool, experimentId);
  if (!e) throw new Error(`experiment ${experimentId} vanished`);
  let page: ImageSetRow[] = [];
  let seeded = 0;
  let lastLog = Date.now();
  const flush = async (): Promise<void> => {
    const outcomes = (await Readable.from(page)
      .map(
        async (row: ImageSetRow): Promise<ImageSetOutcome> => {
          const prefix = layout.setPrefix(experimentId, row.set_key);
          const files = ['DNA', 'Actin'].map((channel) => ({ channel, path: `${channel}.tif` }));
          const tables = noopTables({ key: row.set_key, metadata: row.metadata, files }, 1);
          const stored = await Promise.all(tables.map((t) => putBytes(e.bucket, `${prefix}${t.name}`, t.text, 'text/csv')));
          // The summary the analysis activity records (same code, same tables).
          const measured = await measureImageSet(
            { key: row.set_key, status: 'done', metadata: row.metadata, tables: tables.map((t) => ({ name: t.name, open: async () => Readable.from([t.text]) })) },
            new ExtraColumnPlan([]),
            undefined,
          );
          return {
            summary: summaryOf(measured),
            imageSetId: row.id,
            status: 'done',
            attempts: 1,
            outputPrefix: prefix,
            results: stored.map((s, i) => ({ kind: `table:${tables[i]!.name.slice(0, -4)}`, uri: s.uri, size: s.size, checksum: s.checksum })),
          };
        },
        { concurrency: PUT_CONCURRENCY },
      )
      .toArray()) as ImageSetOutcome[];
    await applyImageSetOutcomes(pool, experimentId, outcomes);
    seeded += page.length;
    page = [];
    if (Date.now() - lastLog > 20_000) {
      log(`  seeded ${seeded.toLocaleString('en')}/${sets.toLocaleString('en')} sets (${((Date.now() - started) / 1000).toFixed(0)} s)`);
      lastLog = Date.now();
    }
  };
  for await (const row of allImageSets(pool, experimentId, PAGE)) {
    page.push(row);
    if (page.length >= PAGE) await flush();
  }
  if (page.length > 0) await flush();
  return { experimentId, seconds: (Date.now() - started) / 1000 };
}
