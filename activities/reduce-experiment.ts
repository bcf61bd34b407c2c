import fs from 'node:fs';
import path from 'node:path';
import { Context } from '@temporalio/activity';
import { webUiLink, workerConfig } from '../core/config';
import { metadataKeysOf } from '../core/grouping';
import {
  allImageSets,
  db,
  getExperiment,
  imageSetCounts,
  imageSetSummaries,
  stageHasTables,
  stagesOf,
  tableUrisBySet,
  upsertExperimentResult,
  type Db,
  type ImageSetRow,
} from '../core/db';
import { setSummarySchema, type ReduceInput, type ReduceOutput, type SetSummary } from '../core/model';
import { getBytesIfExists, getStream, layout, parseS3Uri, putBytes, putFile } from '../core/s3';
import { CPFLOW_VERSION, gitCommit, workerIdentity } from '../core/version';
import { provenanceSchema, type SetProvenance } from './provenance';
import { mergeImageSetTables, type ImageSetResult } from './reduce/summary';
import { renderReport } from './reduce/report';
import { loadProfilesForReport } from './reduce/profiles-inputs';

/**
 * reduceExperiment: merges every image set's tables into `summary.csv` and `report.html` under the
 * experiment's results prefix, records them in MariaDB, and returns the counts the final status is
 * decided on. Streams sets page by page, so memory stays bounded at 100,000 sets.
 *
 * Stages: the final stage's tables make `summary.csv` and the report; every other stage that wrote
 * tables gets its own `results/stages/<stage>/summary.csv`. A stage without tables (an illumination
 * pipeline whose results are its saved functions) gets no summary; the report still lists its sets.
 */

const PAGE = 500;

/** A set's tables, each opened from S3 when the merge reads it. */
function tablesOf(uris: string[]): ImageSetResult['tables'] {
  return uris.map((uri) => ({
    name: path.posix.basename(uri),
    open: async () => {
      const { bucket, key } = parseS3Uri(uri);
      return getStream(bucket, key);
    },
  }));
}

/**
 * The tables of a set merged from its summary, listed only if the report samples the set. Built out
 * here, not inline in setResults: a closure there would keep its whole page (500 parsed summaries)
 * alive for as long as the report's sample holds the set, about every page at 100,000 sets.
 */
function sampleTablesOf(pool: Db, imageSetId: number): () => Promise<ImageSetResult['tables']> {
  return async () => tablesOf((await tableUrisBySet(pool, [imageSetId])).get(imageSetId) ?? []);
}

async function* setResults(pool: Db, experimentId: number, stage: string, onSet: () => void): AsyncGenerator<ImageSetResult> {
  let page: ImageSetRow[] = [];
  const emit = async function* (rows: ImageSetRow[]): AsyncGenerator<ImageSetResult> {
    // Done sets measured by the analysis activity are merged from their summaries (MariaDB); only the
    // others' tables are listed and read from S3.
    const done = rows.filter((r) => r.status === 'done').map((r) => r.id);
    const summaries = new Map<number, SetSummary>();
    for (const [id, raw] of await imageSetSummaries(pool, done)) {
      const parsed = setSummarySchema.safeParse(raw);
      if (parsed.success) summaries.set(id, parsed.data);
    }
    const tables = await tableUrisBySet(
      pool,
      done.filter((id) => !summaries.has(id)),
    );
    for (const row of rows) {
      onSet();
      const isDone = row.status === 'done';
      const summary = summaries.get(row.id);
      yield {
        key: row.set_key,
        status: isDone ? 'done' : 'failed',
        metadata: row.metadata,
        error: isDone ? undefined : (row.error ?? `not analysed (status ${row.status})`),
        tables: isDone && !summary ? tablesOf(tables.get(row.id) ?? []) : [],
        ...(summary ? { summary, sampleTables: sampleTablesOf(pool, row.id) } : {}),
      };
    }
  };
  for await (const row of allImageSets(pool, experimentId, PAGE, stage)) {
    page.push(row);
    if (page.length >= PAGE) {
      yield* emit(page);
      page = [];
    }
  }
  if (page.length > 0) yield* emit(page);
}

export async function reduceExperiment(input: ReduceInput): Promise<ReduceOutput> {
  const ctx = Context.current();
  const startedAt = new Date().toISOString();
  const pool = await db();
  const e = await getExperiment(pool, input.experimentId);
  if (!e) throw new Error(`experiment ${input.experimentId} does not exist`);

  const workDir = await fs.promises.mkdtemp(path.join(workerConfig().CPFLOW_WORK_DIR, `cpflow-reduce-${e.id}-`));
  try {
    const stages = stagesOf(e);
    const finalStage = stages[stages.length - 1]?.name ?? '';
    // LoadData experiments have no file-name rule: their metadata keys are the CSV's.
    let metadataKeys = metadataKeysOf(e.grouping_rule);
    if (metadataKeys.length === 0) {
      for await (const row of allImageSets(pool, e.id, 1)) {
        metadataKeys = Object.keys(row.metadata);
        break;
      }
    }
    let seen = 0;
    const beat = setInterval(() => ctx.heartbeat({ setsMerged: seen }), 5_000);
    const summaries = new Map<string, { path: string; hasTables: boolean }>();
    let stats;
    try {
      for (const stage of stages) {
        const hasTables = await stageHasTables(pool, e.id, stage.name);
        // The final stage is always merged (its statistics make the report); others only with tables.
        if (!hasTables && stage.name !== finalStage) continue;
        const summaryPath = path.join(workDir, `summary-${stage.name || 'experiment'}.csv`);
        const stageStats = await mergeImageSetTables(
          setResults(pool, e.id, stage.name, () => {
            seen++;
          }),
          { out: fs.createWriteStream(summaryPath), metadataKeys, expectTables: hasTables },
        );
        summaries.set(stage.name, { path: summaryPath, hasTables });
        if (stage.name === finalStage) stats = stageStats;
      }
    } finally {
      clearInterval(beat);
    }
    if (!stats) throw new Error(`experiment ${e.id}: final stage ${finalStage} was not merged`);

    // The engine that produced the tables, from the first finished set's provenance.
    let engine: SetProvenance['engine'] = { name: e.engine, version: 'unknown' };
    if (stats.firstDoneKey !== undefined) {
      const raw = await getBytesIfExists(e.bucket, `${layout.setPrefix(e.id, stats.firstDoneKey, finalStage)}provenance.json`);
      const parsed = raw ? provenanceSchema.safeParse(JSON.parse(raw.toString('utf8'))) : undefined;
      if (parsed?.success) engine = parsed.data.engine;
    }

    let summary: Awaited<ReturnType<typeof putFile>> | undefined;
    const stageSummaries: Record<string, string> = {};
    for (const [stage, merged] of summaries) {
      if (!merged.hasTables) continue;
      if (stage === finalStage) {
        summary = await putFile(e.bucket, layout.results(e.id, 'summary.csv'), merged.path, { contentType: 'text/csv' });
      } else {
        const stored = await putFile(e.bucket, layout.results(e.id, `stages/${stage}/summary.csv`), merged.path, { contentType: 'text/csv' });
        await upsertExperimentResult(pool, e.id, { kind: `summary:${stage}`, uri: stored.uri, size: stored.size, checksum: stored.checksum });
        stageSummaries[stage] = stored.uri;
      }
    }
    const profiles = input.profiles ? await loadProfilesForReport(input.profiles) : undefined;
    const provenance = {
      kind: 'cpflow.experiment-provenance/v1',
      experiment: { id: e.id, name: e.name, project: e.project_name },
      engine,
      pipeline: { uri: e.pipeline_uri, sha256: e.pipeline_sha256 },
      ...(stages.length > 1 || stages.some((s) => s.groupBy.length > 0)
        ? { stages: stages.map((s) => ({ name: s.name, pipeline: s.pipelineUri, sha256: s.pipelineSha256, groupBy: s.groupBy, inputs: s.inputs, summary: stageSummaries[s.name] })) }
        : {}),
      ...(e.warnings.length > 0 ? { warnings: e.warnings } : {}),
      groupingRule: e.grouping_rule,
      imageSets: { total: stats.rows, done: stats.setsDone, failed: stats.setsFailed },
      cpflow: { version: CPFLOW_VERSION, gitCommit: gitCommit() },
      worker: workerIdentity(),
      ...(profiles ? { profiles: profiles.provenance } : {}),
      workflowId: input.workflowId,
      startedAt: e.started_at?.toISOString() ?? null,
      reducedAt: startedAt,
      finishedAt: new Date().toISOString(),
    };
    const html = renderReport(stats, {
      experimentId: e.id,
      experimentName: e.name,
      project: e.project_name,
      engine,
      provenance,
      generatedAt: new Date().toISOString(),
      workflowUrl: webUiLink(input.workflowId),
      profiles: profiles?.section,
    });
    const report = await putBytes(e.bucket, layout.results(e.id, 'report.html'), html, 'text/html; charset=utf-8');
    const prov = await putBytes(
      e.bucket,
      layout.results(e.id, 'provenance.json'),
      JSON.stringify(provenance, null, 2),
      'application/json',
    );
    for (const [kind, r] of [
      ['summary', summary],
      ['report', report],
      ['experiment-provenance', prov],
    ] as const) {
      if (r) await upsertExperimentResult(pool, e.id, { kind, uri: r.uri, size: r.size, checksum: r.checksum });
    }
    const counts = await imageSetCounts(pool, e.id);
    return {
      summaryUri: summary?.uri,
      reportUri: report.uri,
      provenanceUri: prov.uri,
      total: counts.total,
      done: counts.done,
      failed: counts.total - counts.done,
      objects: stats.objectsTotal,
    };
  } finally {
    await fs.promises.rm(workDir, { recursive: true, force: true });
  }
}

