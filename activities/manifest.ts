import crypto from 'node:crypto';
import path from 'node:path';
import { z } from 'zod';
import {
  db,
  failPartitionSets,
  getExperiment,
  getProfilesOptions,
  groupStatusCounts,
  pendingGroups,
  pendingImageSets,
  pendingPartitions,
  stagesOf,
  type ExperimentRow,
  type PendingSet,
} from '../core/db';
import {
  dispatchOptionsSchema,
  ENGINE_NAMES,
  engineOptionsSchema,
  STAGE_INPUT_KINDS,
  stageInputFileName,
  stageInputSchema,
  upstreamOf,
  type ChunkIndexEntry,
  type ChunkManifestRef,
  type ChunkRef,
  type ChunkResult,
  type ExperimentPlan,
  type FailPartitionInput,
  type PartitionState,
  type PrepareChunksInput,
  type PreparedChunks,
  type StagePlan,
  type StageSpec,
} from '../core/model';
import { layout, s3Store, type ObjectStore } from '../core/s3';
import { groupProvenanceSchema, type GroupProvenance } from './provenance';

/**
 * Manifest activities. The workflow never carries file lists: it asks for the next page of pending
 * image sets of one partition of one stage, which is written to S3 as a chunk manifest, and passes
 * only the manifest's key on. Analysis then reads S3 alone, so a MariaDB outage delays the mirror
 * but not the analysis. Grouped stages are paged by whole groups: a group is never split.
 */

export async function loadExperimentPlan(experimentId: number): Promise<ExperimentPlan> {
  const pool = await db();
  const e = await getExperiment(pool, experimentId);
  if (!e) throw new Error(`experiment ${experimentId} does not exist`);
  const profiles = (await getProfilesOptions(pool, experimentId)) !== undefined;
  const specs = stagesOf(e);
  const stages: StagePlan[] = specs.map((s) => ({
    name: s.name,
    grouped: s.groupBy.length > 0,
    upstream: upstreamOf(s),
    dependents: specs.filter((d) => upstreamOf(d) === s.name).map((d) => d.name),
  }));
  const partitions: PartitionState[] = [];
  for (const stage of stages) {
    if (!stage.upstream) continue;
    const upstreamGroups = await groupStatusCounts(pool, e.id, stage.upstream);
    for (const partition of await pendingPartitions(pool, e.id, stage.name)) {
      const counts = upstreamGroups.get(partition);
      if (!counts) {
        partitions.push({ stage: stage.name, partition, state: 'blocked', error: `stage ${stage.upstream} has no group ${partition}` });
      } else if (counts.pending + counts.running > 0) {
        partitions.push({ stage: stage.name, partition, state: 'waiting' });
      } else if (counts.failed + counts.cancelled === 0) {
        partitions.push({ stage: stage.name, partition, state: 'ready' });
      } else {
        partitions.push({
          stage: stage.name,
          partition,
          state: 'blocked',
          error: `stage ${stage.upstream} group ${partition} failed (${counts.failed + counts.cancelled} of its image sets failed)`,
        });
      }
    }
  }
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
    stages,
    partitions,
  };
}

const manifestFileSchema = z.object({ channel: z.string(), uri: z.string(), size: z.number(), checksum: z.string() });

export const chunkManifestSchema = z.object({
  experimentId: z.number().int(),
  bucket: z.string(),
  engine: z.enum(ENGINE_NAMES),
  engineOptions: engineOptionsSchema,
  dispatch: dispatchOptionsSchema,
  /** The stage ('' for a plain experiment); manifests written before stages existed have none. */
  stage: z.string().default(''),
  /** The stage's groupBy keys: non-empty means every activity runs exactly one whole group. */
  groupBy: z.array(z.string()).default([]),
  /** How the engine hands the sets to CellProfiler (file list or a LoadData CSV). */
  input: z.enum(STAGE_INPUT_KINDS).default('files'),
  /** Files of an earlier stage this stage's sets receive (already resolved into each set's files). */
  stageInputs: z.array(stageInputSchema).default([]),
  pipelineUri: z.string().nullable(),
  pipelineSha256: z.string().nullable(),
  sets: z.array(
    z.object({
      id: z.number().int(),
      key: z.string(),
      group: z.string().default(''),
      metadata: z.record(z.string(), z.string()),
      files: z.array(manifestFileSchema),
    }),
  ),
});
export type ChunkManifest = z.infer<typeof chunkManifestSchema>;
export type ManifestSet = ChunkManifest['sets'][number];

/** A partition's sets cannot run: an upstream file is missing. The sets are failed with this reason. */
class UnresolvableInputs extends Error {}

/**
 * Write manifests for up to `maxChunks` chunks of pending image sets of one partition of one stage.
 * Idempotent: a chunk's key derives from its first set id (unique in the experiment), so a retry
 * rewrites the same objects.
 */
export async function prepareManifestChunks(input: PrepareChunksInput): Promise<PreparedChunks> {
  const pool = await db();
  const e = await getExperiment(pool, input.experimentId);
  if (!e) throw new Error(`experiment ${input.experimentId} does not exist`);
  const specs = stagesOf(e);
  const spec = specs.find((s) => s.name === input.stage);
  if (!spec) throw new Error(`experiment ${e.id} has no stage ${JSON.stringify(input.stage)}`);
  const hasDependents = specs.some((d) => upstreamOf(d) === spec.name);
  const ref = { experimentId: e.id, stage: spec.name, partition: input.partition };
  const cursor = { afterSetId: input.afterSetId, afterGroup: input.afterGroup };

  let upstreamFiles: Array<z.infer<typeof manifestFileSchema>> = [];
  if (spec.inputs.length > 0) {
    try {
      upstreamFiles = await resolveStageInputs(s3Store, e, spec, input.partition);
    } catch (err) {
      if (!(err instanceof UnresolvableInputs)) throw err;
      const failed = await failPartitionSets(pool, ref, err.message);
      return { chunks: [], cursor, sealed: e.sealed, status: e.status, failed: partitionFailure(spec.name, failed, err.message) };
    }
  }

  const chunks: ChunkRef[] = [];
  for (let i = 0; i < input.maxChunks; i++) {
    const grouped = spec.groupBy.length > 0;
    const sets: PendingSet[] = grouped
      ? await pendingGroups(pool, ref, cursor.afterGroup, input.chunkSize)
      : await pendingImageSets(pool, ref, cursor.afterSetId, input.chunkSize);
    const first = sets[0];
    const last = sets[sets.length - 1];
    if (!first || !last) break;
    const manifest: ChunkManifest = {
      experimentId: e.id,
      bucket: e.bucket,
      engine: e.engine,
      engineOptions: e.engine_options,
      dispatch: e.dispatch_options,
      stage: spec.name,
      groupBy: spec.groupBy,
      input: spec.input,
      stageInputs: spec.inputs,
      pipelineUri: spec.pipelineUri,
      pipelineSha256: spec.pipelineSha256,
      sets: sets.map((s) => ({
        id: s.id,
        key: s.set_key,
        group: s.group_key,
        metadata: s.metadata,
        files: [...s.files.map((f) => ({ channel: f.channel, uri: f.uri, size: f.size, checksum: f.checksum })), ...upstreamFiles],
      })),
    };
    const firstId = Math.min(...sets.map((s) => s.id));
    const body = JSON.stringify(manifest);
    const manifestKey = layout.manifestChunk(e.id, firstId, crypto.createHash('sha256').update(body).digest('hex'));
    await s3Store.putBytes(e.bucket, manifestKey, body, 'application/json');
    const groups = grouped ? [...new Set(sets.map((s) => s.group_key))] : [];
    chunks.push({
      manifestKey,
      stage: spec.name,
      groups: hasDependents ? groups : undefined,
      count: sets.length,
      firstSetId: firstId,
      lastSetId: Math.max(...sets.map((s) => s.id)),
      firstKey: first.set_key,
      lastKey: last.set_key,
    });
    if (grouped) cursor.afterGroup = last.group_key;
    else cursor.afterSetId = last.id;
    if (!grouped && sets.length < input.chunkSize) break;
  }
  return { chunks, cursor, sealed: e.sealed, status: e.status };
}

function partitionFailure(stage: string, failed: { failed: number; keys: string[] }, error: string): ChunkResult {
  return { stage, done: 0, failed: failed.failed, skipped: 0, failures: failed.keys.map((key) => ({ key, stage, error, attempts: 0 })) };
}

/**
 * The files the upstream group of `partition` wrote that this stage takes as channels, read from
 * the upstream group's provenance.json (written last, so it exists only for a finished group).
 */
async function resolveStageInputs(
  store: ObjectStore,
  e: ExperimentRow,
  spec: StageSpec,
  partition: string,
): Promise<Array<z.infer<typeof manifestFileSchema>>> {
  const upstream = upstreamOf(spec);
  if (!upstream) return [];
  const key = `${layout.groupPrefix(e.id, partition, upstream)}provenance.json`;
  const raw = await store.getBytesIfExists(e.bucket, key);
  if (!raw) throw new UnresolvableInputs(`stage ${upstream} group ${partition} has no provenance.json (s3://${e.bucket}/${key}): it has not finished`);
  const parsed = groupProvenanceSchema.safeParse(JSON.parse(raw.toString('utf8')));
  if (!parsed.success) throw new UnresolvableInputs(`stage ${upstream} group ${partition}: unreadable provenance.json (${parsed.error.issues[0]?.message})`);
  return spec.inputs.map((wanted) => {
    const name = stageInputFileName(wanted.file, parsed.data.group.metadata);
    const found = findGroupOutput(parsed.data, name);
    if (!found) {
      const produced = [...parsed.data.outputs.map((o) => o.name), ...parsed.data.sets.flatMap((s) => s.outputs.map((o) => `${s.key}/${o.name}`))];
      throw new UnresolvableInputs(
        `stage ${upstream} group ${partition} wrote no file ${name} for ${wanted.as} (it wrote: ${produced.slice(0, 10).join(', ') || 'nothing'})`,
      );
    }
    // Outputs are recorded as `sha256:<hex>`, the same form the image files' checksums take.
    return { channel: wanted.as, uri: found.uri, size: found.size, checksum: found.checksum };
  });
}

/** A group output by relative name, else by base name; per-set outputs only when exactly one set wrote it. */
function findGroupOutput(p: GroupProvenance, name: string): GroupProvenance['outputs'][number] | undefined {
  const matches = (o: { name: string }) => o.name === name || (!name.includes('/') && path.posix.basename(o.name) === name);
  const group = p.outputs.filter(matches);
  if (group.length === 1) return group[0];
  if (group.length > 1) return group.find((o) => o.name === name);
  const perSet = p.sets.flatMap((s) => s.outputs.filter(matches));
  return perSet.length === 1 ? perSet[0] : undefined;
}

export async function failPartition(input: FailPartitionInput): Promise<ChunkResult> {
  const pool = await db();
  const failed = await failPartitionSets(pool, input, input.error);
  return partitionFailure(input.stage, failed, input.error);
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

/** The ids, keys and groups of a chunk, so the workflow can name each set and keep groups whole. */
export async function loadChunkIndex(ref: ChunkManifestRef): Promise<ChunkIndexEntry[]> {
  const m = await readChunkManifest(ref);
  return m.sets.map((s) => ({ id: s.id, key: s.key, group: m.groupBy.length > 0 ? s.group : '' }));
}
