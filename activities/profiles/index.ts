/**
 * computeProfiles (queue `reduce`): an experiment with a platemap, after every image set has ended,
 * gets `results/single_cells.parquet` (CytoTable) and `results/profiles/` (pycytominer: well
 * profiles, normalised, feature-selected; Parquet and CSV), plus the report's data and provenance.
 *
 * 1. Every done set's tables are gathered from S3 into one CSV per table (gather.ts).
 * 2. profiles.py runs CytoTable and pycytominer with the pinned venv's python (CPFLOW_PROFILES_PYTHON).
 * 3. The files are uploaded under the experiment's results prefix and recorded in MariaDB.
 *
 * Idempotent: the same tables and platemap give the same bytes (checked in the integration test),
 * written to the same keys. Failures: bad input (no Well metadata, wells missing from the platemap,
 * no profiling tools on this worker) is non-retryable at once; a crash of the tools is retried up to
 * PROFILES_MAX_ATTEMPTS; outages (S3, MariaDB) retry without limit.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { workerConfig } from '../../core/config';
import { allImageSets, db, getExperiment, getProfilesOptions, tableUrisBySet, upsertExperimentResult, type Db, type ImageSetRow } from '../../core/db';
import { isInfrastructureError } from '../../core/errors';
import { DEFAULTS, type ProfilesInput, type ProfilesOutput } from '../../core/model';
import { getBytes, isNotFound, layout, parseS3Uri, putBytes, putFile, sha256File } from '../../core/s3';
import { CPFLOW_VERSION, gitCommit, workerIdentity } from '../../core/version';
import { gatherTables, UnreadableTableError, type GatherSet } from './gather';
import { ProfilesCrash, ProfilesInputError, runProfilesScript } from './run';

const PAGE = 500;

/** Failure types computeProfiles throws when retrying cannot help. */
export const NON_RETRYABLE_PROFILES_ERRORS = ['ProfilesInputError', 'ProfilesUnavailable', 'ProfilesFailure'];

/** S3 key of a profiles output under the experiment's results prefix. */
export const profilesKey = (experimentId: number, relative: string): string => layout.results(experimentId, relative);

async function* doneSets(pool: Db, experimentId: number): AsyncGenerator<GatherSet> {
  let page: ImageSetRow[] = [];
  const emit = async function* (rows: ImageSetRow[]): AsyncGenerator<GatherSet> {
    const tables = await tableUrisBySet(pool, rows.map((r) => r.id));
    for (const row of rows) {
      yield {
        key: row.set_key,
        metadata: row.metadata,
        tables: (tables.get(row.id) ?? []).map((uri) => ({
          name: path.posix.basename(uri),
          read: async () => {
            const { bucket, key } = parseS3Uri(uri);
            try {
              return await getBytes(bucket, key);
            } catch (err) {
              if (isNotFound(err)) throw new UnreadableTableError(`${uri} is missing`);
              throw err;
            }
          },
        })),
      };
    }
  };
  for await (const row of allImageSets(pool, experimentId, PAGE)) {
    if (row.status !== 'done') continue;
    page.push(row);
    if (page.length >= PAGE) {
      yield* emit(page);
      page = [];
    }
  }
  if (page.length > 0) yield* emit(page);
}

const CONTENT_TYPES: Record<string, string> = {
  '.parquet': 'application/vnd.apache.parquet',
  '.csv': 'text/csv',
  '.json': 'application/json',
};

export async function computeProfiles(input: ProfilesInput): Promise<ProfilesOutput> {
  const ctx = Context.current();
  const attempt = ctx.info.attempt;
  const startedAt = new Date().toISOString();
  const pool = await db();
  const e = await getExperiment(pool, input.experimentId);
  if (!e) throw ApplicationFailure.nonRetryable(`experiment ${input.experimentId} does not exist`, 'ProfilesInputError');
  const options = await getProfilesOptions(pool, e.id);
  if (!options) throw ApplicationFailure.nonRetryable(`experiment ${e.id} was submitted without a platemap`, 'ProfilesInputError');
  const config = workerConfig();
  const python = config.CPFLOW_PROFILES_PYTHON;
  if (!python || !fs.existsSync(python)) {
    throw ApplicationFailure.nonRetryable(
      `no profiling tools on reduce worker ${os.hostname()}: CPFLOW_PROFILES_PYTHON ${python ? `(${python}) does not exist` : 'is unset'}; ` +
        'install them with `npm run stack -- install-profiles`',
      'ProfilesUnavailable',
    );
  }

  const workDir = await fs.promises.mkdtemp(path.join(config.CPFLOW_WORK_DIR, `cpflow-profiles-${e.id}-`));
  let phase = 'gathering tables';
  let detail: unknown = {};
  const beat = setInterval(() => ctx.heartbeat({ phase, detail }), 5_000);
  try {
    const tablesDir = path.join(workDir, 'tables');
    const outDir = path.join(workDir, 'out');
    const gathered = await gatherTables(doneSets(pool, e.id), tablesDir, {
      concurrency: DEFAULTS.PROFILES_DOWNLOAD_CONCURRENCY,
      onProgress: (sets) => {
        detail = { setsGathered: sets };
      },
    });
    if (gathered.sets === 0) throw new ProfilesInputError('no image set is done: there are no cells to profile');

    const platemapPath = path.join(workDir, 'platemap.csv');
    const { bucket: platemapBucket, key: platemapKey } = parseS3Uri(options.platemap.uri);
    await fs.promises.writeFile(platemapPath, await getBytes(platemapBucket, platemapKey));
    const platemapSha = await sha256File(platemapPath);
    if (platemapSha !== options.platemap.sha256) {
      throw new ProfilesInputError(`${options.platemap.uri} has sha256 ${platemapSha}, not the ${options.platemap.sha256} submitted`);
    }

    phase = 'CytoTable and pycytominer';
    const summary = await runProfilesScript({
      python,
      tablesDir,
      platemapPath,
      outDir,
      options,
      threads: Math.max(1, Math.min(os.cpus().length, 4)),
      signal: ctx.cancellationSignal,
      onProgress: (line) => {
        detail = line;
      },
    });

    phase = 'uploading';
    const upload = async (relative: string, kind: string): Promise<string> => {
      const local = path.join(outDir, relative);
      const stored = await putFile(e.bucket, profilesKey(e.id, relative), local, { contentType: CONTENT_TYPES[path.extname(relative)] });
      await upsertExperimentResult(pool, e.id, { kind, uri: stored.uri, size: stored.size, checksum: stored.checksum });
      return stored.uri;
    };
    const singleCellsUri = await upload(summary.singleCells, 'single-cells');
    const profileUris: string[] = [];
    for (const file of summary.files) profileUris.push(await upload(file, 'profiles'));
    const reportDataRelative = 'profiles/report-data.json';
    await fs.promises.rename(path.join(outDir, summary.reportData), path.join(outDir, reportDataRelative));
    const reportDataUri = await upload(reportDataRelative, 'profiles-report-data');

    const provenance = {
      kind: 'cpflow.profiles-provenance/v1',
      experiment: { id: e.id, name: e.name, project: e.project_name },
      platemap: options.platemap,
      settings: {
        controls: options.controls,
        normalization: options.normalization,
        featureSelection: options.featureSelection,
        aggregation: options.aggregation,
        reportFeature: options.reportFeature ?? null,
        cellsPerBatch: DEFAULTS.PROFILES_CELLS_PER_BATCH,
        cytotableChunkSize: DEFAULTS.PROFILES_CYTOTABLE_CHUNK_SIZE,
      },
      tools: summary.versions,
      compartments: summary.compartments,
      input: {
        imageSets: gathered.sets,
        setsSkipped: gathered.setsSkipped,
        firstSkipReason: gathered.firstSkipReason ?? null,
        setsWithOtherColumns: gathered.setsWithOtherColumns,
        droppedColumns: gathered.droppedColumns,
        rows: gathered.rows,
      },
      output: { cells: summary.cells, wells: summary.wells, plates: summary.plates, features: summary.features },
      warnings: summary.warnings,
      seconds: summary.seconds,
      peakRssBytes: summary.peakRssBytes,
      cpflow: { version: CPFLOW_VERSION, gitCommit: gitCommit() },
      worker: { ...workerIdentity(), attempt },
      workflowId: input.workflowId,
      startedAt,
      finishedAt: new Date().toISOString(),
    };
    const prov = await putBytes(e.bucket, profilesKey(e.id, 'profiles/provenance.json'), `${JSON.stringify(provenance, null, 2)}\n`, 'application/json');
    await upsertExperimentResult(pool, e.id, { kind: 'profiles-provenance', uri: prov.uri, size: prov.size, checksum: prov.checksum });
    return {
      singleCellsUri,
      profileUris,
      reportDataUri,
      provenanceUri: prov.uri,
      cells: summary.cells,
      wells: summary.wells,
      features: summary.features,
    };
  } catch (err) {
    if (err instanceof ProfilesInputError) throw ApplicationFailure.nonRetryable(err.message, 'ProfilesInputError');
    if (err instanceof ProfilesCrash && attempt >= DEFAULTS.PROFILES_MAX_ATTEMPTS && !isInfrastructureError(err)) {
      throw ApplicationFailure.nonRetryable(`${err.message} (attempt ${attempt})`, 'ProfilesFailure');
    }
    throw err;
  } finally {
    clearInterval(beat);
    await fs.promises.rm(workDir, { recursive: true, force: true });
  }
}
