import fs from 'node:fs';
import path from 'node:path';
import { db, registerExperiment, upsertProject, type NewImageSet } from '../../core/db';
import { DEFAULTS, dispatchOptionsSchema, type DispatchOptions } from '../../core/model';
import { GROUPING_PRESETS } from '../../core/grouping';
import { ensureBucket, putBytes, s3Uri } from '../../core/s3';
import { bucketForProject } from '../../starter/submit';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';

/**
 * Inputs for the benchmark: synthetic plates on disk (cached between runs, since rendering a few
 * hundred images takes a while and they are deterministic), and experiments of any size registered
 * straight into MariaDB for the no-op engine, which never opens its images.
 */

export const BENCH_PROJECT = 'cpflow-bench';
const SYNTHETIC_RULE = GROUPING_PRESETS.synthetic?.rule;
const WELLS_PER_PLATE = 16 * 24;

export interface PlateSpec {
  rows: number;
  cols: number;
  sites: number;
  size: number;
  seed: number;
}

/** The smallest 24-column plate layout with at least `sets` image sets. */
export function plateFor(sets: number, size: number, seed = 42): PlateSpec {
  const sites = Math.max(1, Math.ceil(sets / WELLS_PER_PLATE));
  const rows = Math.min(16, Math.ceil(sets / (24 * sites)));
  return { rows, cols: 24, sites, size, seed };
}

export const setCount = (p: PlateSpec): number => p.rows * p.cols * p.sites;

/** A synthetic plate folder under `cacheRoot`, generated once per spec. */
export async function cachedPlate(cacheRoot: string, spec: PlateSpec, log: (l: string) => void): Promise<string> {
  const dir = path.join(cacheRoot, `plate-${spec.rows}x${spec.cols}x${spec.sites}-${spec.size}px-seed${spec.seed}`);
  const marker = path.join(dir, '.complete');
  if (fs.existsSync(marker)) return dir;
  fs.rmSync(dir, { recursive: true, force: true });
  log(`  generating a ${setCount(spec)}-set synthetic plate (${spec.size}×${spec.size} px) in ${dir} …`);
  await generateSyntheticPlate({ outDir: dir, ...spec, bitDepth: 16 });
  // The ground truth is not an image: keep it out of the folder the grouping rule reads.
  fs.renameSync(path.join(dir, 'ground-truth.json'), path.join(cacheRoot, `${path.basename(dir)}.ground-truth.json`));
  fs.writeFileSync(marker, new Date().toISOString());
  return dir;
}

const ROW_LETTERS = 'ABCDEFGHIJKLMNOP';

/** Image set keys and metadata laid out as plates of 384 wells × `sites` sites. */
function syntheticLayout(index: number, sites: number): { key: string; metadata: Record<string, string> } {
  const perPlate = WELLS_PER_PLATE * sites;
  const plate = `P${String(Math.floor(index / perPlate) + 1).padStart(4, '0')}`;
  const inPlate = index % perPlate;
  const wellIndex = Math.floor(inPlate / sites);
  const site = String((inPlate % sites) + 1);
  const well = `${ROW_LETTERS[Math.floor(wellIndex / 24)]}${String((wellIndex % 24) + 1).padStart(2, '0')}`;
  return { key: `${plate}-${well}-s${site}`, metadata: { Plate: plate, Well: well, Site: site } };
}

/**
 * Register an experiment of `sets` image sets whose two channels all point at two tiny objects in S3
 * (the no-op engine downloads but never decodes them). Rows go in through `registerExperiment`, in
 * one transaction, as a lab system's bulk insert would. Returns the id and how long registering took.
 */
export async function registerNoopExperiment(
  name: string,
  sets: number,
  dispatch: Partial<DispatchOptions> = {},
): Promise<{ experimentId: number; seconds: number }> {
  if (!SYNTHETIC_RULE) throw new Error('grouping preset "synthetic" is missing');
  const pool = await db();
  const bucket = bucketForProject(BENCH_PROJECT);
  await ensureBucket(bucket);
  const projectId = await upsertProject(pool, BENCH_PROJECT, bucket);
  const files = await Promise.all(
    ['DNA', 'Actin'].map(async (channel) => ({
      channel,
      ...(await putBytes(bucket, `inputs/noop/${channel}.tif`, `cpflow benchmark placeholder for channel ${channel}\n`, 'image/tiff')),
    })),
  );
  const sites = 4;
  const rows: NewImageSet[] = Array.from({ length: sets }, (_, i) => ({
    ...syntheticLayout(i, sites),
    files: files.map((f) => ({ channel: f.channel, uri: f.uri, size: f.size, checksum: f.checksum })),
  }));
  const started = Date.now();
  const experimentId = await registerExperiment(
    pool,
    {
      projectId,
      name,
      pipelineUri: null,
      pipelineSha256: null,
      // The row says builtin; the benchmark's cellprofiler worker runs with CPFLOW_ENGINE_OVERRIDE=noop.
      engine: 'builtin',
      engineOptions: {},
      // As `cpflow submit`: without a batch size the batch size adapts to the measured cost per set.
      dispatch: dispatchOptionsSchema.parse({ ...dispatch, batchSizeExplicit: dispatch.batchSizeExplicit ?? dispatch.batchSize !== undefined }),
      inputPrefix: s3Uri(bucket, 'inputs/noop/'),
      groupingRule: SYNTHETIC_RULE,
      sealed: true,
      maxFailedFraction: DEFAULTS.MAX_FAILED_FRACTION,
    },
    rows,
  );
  return { experimentId, seconds: (Date.now() - started) / 1000 };
}
