import { z } from 'zod';
import { db, getExperiment, pendingImageSets, type EngineOptions, type ExperimentRow } from './lib/db';
import { getBytes, layout, putBytes } from './lib/s3';

/**
 * Manifest activities. The workflow never carries file lists: it asks for the next page of pending
 * image sets, which is written to S3 as a chunk manifest, and passes only the manifest's key on.
 * Analysis then reads S3 alone, so a MariaDB outage delays the mirror but not the analysis.
 */

export interface ExperimentPlan {
  experimentId: number;
  name: string;
  project: string;
  bucket: string;
  engine: ExperimentRow['engine'];
  status: ExperimentRow['status'];
  sealed: boolean;
  totalSets: number;
  maxFailedFraction: number;
}

export async function loadExperimentPlan(experimentId: number): Promise<ExperimentPlan> {
  const pool = await db();
  const e = await getExperiment(pool, experimentId);
  if (!e) throw new Error(`experiment ${experimentId} does not exist`);
  return {
    experimentId,
    name: e.name,
    project: e.project_name,
    bucket: e.bucket,
    engine: e.engine,
    status: e.status,
    sealed: e.sealed,
    totalSets: e.total_sets,
    maxFailedFraction: e.max_failed_fraction,
  };
}

export const chunkManifestSchema = z.object({
  experimentId: z.number().int(),
  bucket: z.string(),
  engine: z.enum(['cellprofiler', 'builtin', 'command']),
  engineOptions: z.object({
    nucleiChannel: z.string().optional(),
    minDiameter: z.number().optional(),
    maxDiameter: z.number().optional(),
    batchSize: z.number().int().default(1),
  }),
  pipelineUri: z.string().nullable(),
  pipelineSha256: z.string().nullable(),
  sets: z.array(
    z.object({
      id: z.number().int(),
      key: z.string(),
      metadata: z.record(z.string(), z.string()),
      files: z.array(z.object({ channel: z.string(), uri: z.string(), size: z.number(), checksum: z.string() })),
    }),
  ),
});
export type ChunkManifest = z.infer<typeof chunkManifestSchema>;

export interface ChunkRef {
  manifestKey: string;
  count: number;
  firstSetId: number;
  lastSetId: number;
  /** Keys of the first and last image set, for the Web UI's summary of the chunk's run. */
  firstKey: string;
  lastKey: string;
}

export interface PreparedChunks {
  chunks: ChunkRef[];
  /** The experiment's sealed flag as the database has it now (a lab system may seal by updating the row). */
  sealed: boolean;
  status: ExperimentRow['status'];
}

/**
 * Write manifests for up to `maxChunks` chunks of pending image sets with id > afterSetId.
 * Idempotent: a chunk's key derives from its first set id, so a retry rewrites the same objects.
 */
export async function prepareManifestChunks(input: {
  experimentId: number;
  afterSetId: number;
  chunkSize: number;
  maxChunks: number;
}): Promise<PreparedChunks> {
  const pool = await db();
  const e = await getExperiment(pool, input.experimentId);
  if (!e) throw new Error(`experiment ${input.experimentId} does not exist`);
  const chunks: ChunkRef[] = [];
  let afterId = input.afterSetId;
  for (let i = 0; i < input.maxChunks; i++) {
    const sets = await pendingImageSets(pool, input.experimentId, afterId, input.chunkSize);
    const first = sets[0];
    const last = sets[sets.length - 1];
    if (!first || !last) break;
    const engineOptions: EngineOptions = e.engine_options;
    const manifest: ChunkManifest = {
      experimentId: e.id,
      bucket: e.bucket,
      engine: e.engine,
      engineOptions,
      pipelineUri: e.pipeline_uri,
      pipelineSha256: e.pipeline_sha256,
      sets: sets.map((s) => ({
        id: s.id,
        key: s.set_key,
        metadata: s.metadata,
        files: s.files.map((f) => ({ channel: f.channel, uri: f.uri, size: f.size, checksum: f.checksum })),
      })),
    };
    const manifestKey = layout.manifestChunk(e.id, first.id);
    await putBytes(e.bucket, manifestKey, JSON.stringify(manifest), 'application/json');
    chunks.push({ manifestKey, count: sets.length, firstSetId: first.id, lastSetId: last.id, firstKey: first.set_key, lastKey: last.set_key });
    afterId = last.id;
    if (sets.length < input.chunkSize) break;
  }
  return { chunks, sealed: e.sealed, status: e.status };
}

// Manifests are immutable once written, so each worker process caches the few it is working on.
const manifestCache = new Map<string, Promise<ChunkManifest>>();
const MANIFEST_CACHE_SIZE = 16;

export function readChunkManifest(bucket: string, manifestKey: string): Promise<ChunkManifest> {
  const cacheKey = `${bucket}/${manifestKey}`;
  let entry = manifestCache.get(cacheKey);
  if (!entry) {
    entry = getBytes(bucket, manifestKey).then((b) => chunkManifestSchema.parse(JSON.parse(b.toString('utf8'))));
    entry.catch(() => manifestCache.delete(cacheKey));
    manifestCache.set(cacheKey, entry);
    if (manifestCache.size > MANIFEST_CACHE_SIZE) {
      const oldest = manifestCache.keys().next().value;
      if (oldest !== undefined) manifestCache.delete(oldest);
    }
  }
  return entry;
}

/** The ids and keys of a chunk, so the workflow can name each image set in its activity summaries. */
export async function loadChunkIndex(input: {
  bucket: string;
  manifestKey: string;
}): Promise<Array<{ id: number; key: string }>> {
  const m = await readChunkManifest(input.bucket, input.manifestKey);
  return m.sets.map((s) => ({ id: s.id, key: s.key }));
}
