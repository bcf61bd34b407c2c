import { z } from 'zod';
import { db, getExperiment, getProfilesOptions, pendingImageSets } from '../core/db';
import {
  dispatchOptionsSchema,
  ENGINE_NAMES,
  engineOptionsSchema,
  type ChunkIndexEntry,
  type ChunkManifestRef,
  type ChunkRef,
  type ExperimentPlan,
  type PrepareChunksInput,
  type PreparedChunks,
} from '../core/model';
import { layout, s3Store, type ObjectStore } from '../core/s3';

/**
 * Manifest activities. The workflow never carries file lists: it asks for the next page of pending
 * image sets, which is written to S3 as a chunk manifest, and passes only the manifest's key on.
 * Analysis then reads S3 alone, so a MariaDB outage delays the mirror but not the analysis.
 */

export async function loadExperimentPlan(experimentId: number): Promise<ExperimentPlan> {
  const pool = await db();
  const e = await getExperiment(pool, experimentId);
  if (!e) throw new Error(`experiment ${experimentId} does not exist`);
  const profiles = (await getProfilesOptions(pool, experimentId)) !== undefined;
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
    dispatch: e.dispatch_options,
    ...(profiles ? { profiles } : {}),
  };
}

export const chunkManifestSchema = z.object({
  experimentId: z.number().int(),
  bucket: z.string(),
  engine: z.enum(ENGINE_NAMES),
  engineOptions: engineOptionsSchema,
  dispatch: dispatchOptionsSchema,
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
export type ManifestSet = ChunkManifest['sets'][number];

/**
 * Write manifests for up to `maxChunks` chunks of pending image sets with id > afterSetId.
 * Idempotent: a chunk's key derives from its first set id, so a retry rewrites the same objects.
 */
export async function prepareManifestChunks(input: PrepareChunksInput): Promise<PreparedChunks> {
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
    const manifest: ChunkManifest = {
      experimentId: e.id,
      bucket: e.bucket,
      engine: e.engine,
      engineOptions: e.engine_options,
      dispatch: e.dispatch_options,
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
    await s3Store.putBytes(e.bucket, manifestKey, JSON.stringify(manifest), 'application/json');
    chunks.push({ manifestKey, count: sets.length, firstSetId: first.id, lastSetId: last.id, firstKey: first.set_key, lastKey: last.set_key });
    afterId = last.id;
    if (sets.length < input.chunkSize) break;
  }
  return { chunks, sealed: e.sealed, status: e.status };
}

/** Manifests are immutable once written, so each reader caches the few its process is working on. */
const MANIFEST_CACHE_SIZE = 16;

export type ManifestReader = (ref: ChunkManifestRef) => Promise<ChunkManifest>;

export function createManifestReader(store: ObjectStore): ManifestReader {
  const cache = new Map<string, Promise<ChunkManifest>>();
  return ({ bucket, manifestKey }) => {
    const cacheKey = `${bucket}/${manifestKey}`;
    let entry = cache.get(cacheKey);
    if (!entry) {
      entry = store.getBytes(bucket, manifestKey).then((b) => chunkManifestSchema.parse(JSON.parse(b.toString('utf8'))));
      entry.catch(() => cache.delete(cacheKey));
      cache.set(cacheKey, entry);
      if (cache.size > MANIFEST_CACHE_SIZE) {
        const oldest = cache.keys().next().value;
        if (oldest !== undefined) cache.delete(oldest);
      }
    }
    return entry;
  };
}

export const readChunkManifest = createManifestReader(s3Store);

/** The ids and keys of a chunk, so the workflow can name each image set in its activity summaries. */
export async function loadChunkIndex(ref: ChunkManifestRef): Promise<ChunkIndexEntry[]> {
  const m = await readChunkManifest(ref);
  return m.sets.map((s) => ({ id: s.id, key: s.key }));
}
