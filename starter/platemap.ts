/**
 * `cpflow submit --platemap`: the flags, the checks against the experiment's image sets (before
 * anything is uploaded), and storing the platemap beside the experiment's pipeline. The experiment
 * then gets the profiles step (activities/profiles/) after its image sets have ended.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Option } from 'commander';
import { getProfilesOptions, type Db } from '../core/db';
import { UsageError } from '../core/errors';
import { checkPlatemap, parseControlsChoice, parsePlatemap, wellsOfSets, type ControlsChoice, type PlatemapCheck } from '../core/platemap';
import { DEFAULTS, NORMALIZATION_METHODS, profilesOptionsSchema, type NormalizationMethod, type ProfilesOptions } from '../core/model';
import { getBytes, parseS3Uri, putBytes } from '../core/s3';

export interface PlatemapRequest {
  file: string;
  controls?: ControlsChoice;
  normalization?: NormalizationMethod;
  reportFeature?: string;
}

export interface PlatemapFlags {
  platemap?: string;
  controls?: string;
  normalization?: NormalizationMethod;
  reportFeature?: string;
}

/** The submit flags of this feature (added to `cpflow submit` one by one, so its chain stays as it is). */
export const PLATEMAP_OPTIONS = {
  platemap: new Option('--platemap <file>', 'platemap CSV (pycytominer layout: well_position, treatment, dose, control_type, …): adds well profiles'),
  controls: new Option(
    '--controls <column=value|none>',
    `platemap rows that are negative controls, normalised against (default ${DEFAULTS.PROFILES_CONTROL_COLUMN}=${DEFAULTS.PROFILES_CONTROL_VALUE} when that column exists; none: whole plates)`,
  ),
  normalization: new Option('--normalization <method>', `pycytominer normalisation (default ${DEFAULTS.PROFILES_NORMALIZATION})`).choices([...NORMALIZATION_METHODS]),
  reportFeature: new Option('--report-feature <name>', `feature of the report's per-well profile heatmap (default ${DEFAULTS.PROFILES_REPORT_FEATURES[0]})`),
};

export function platemapRequestFromFlags(flags: PlatemapFlags): PlatemapRequest | undefined {
  if (!flags.platemap) {
    const stray = [flags.controls && '--controls', flags.normalization && '--normalization', flags.reportFeature && '--report-feature'].filter(Boolean);
    if (stray.length > 0) throw new UsageError(`${stray.join(', ')} only apply with --platemap <file>`);
    return undefined;
  }
  return {
    file: flags.platemap,
    controls: flags.controls === undefined ? undefined : parseControlsChoice(flags.controls),
    normalization: flags.normalization,
    reportFeature: flags.reportFeature,
  };
}

export interface PreparedPlatemap {
  request: PlatemapRequest;
  text: string;
  sha256: string;
  check: PlatemapCheck;
}

/** Reads and checks the platemap against the image sets about to be registered. Throws UsageError (exit 2). */
export function preparePlatemap(request: PlatemapRequest, sets: readonly { key: string; metadata: Record<string, string> }[]): PreparedPlatemap {
  if (!fs.existsSync(request.file) || !fs.statSync(request.file).isFile()) throw new UsageError(`--platemap ${request.file}: no such file`);
  const bytes = fs.readFileSync(request.file);
  const platemap = parsePlatemap(bytes.toString('utf8'), request.file);
  const check = checkPlatemap(platemap, wellsOfSets(sets, request.file), request.controls);
  return { request, text: bytes.toString('utf8'), sha256: createHash('sha256').update(bytes).digest('hex'), check };
}

/** Stores the platemap (content-addressed, like pipelines) and returns the experiment's profiles settings. */
export async function storePlatemap(bucket: string, prepared: PreparedPlatemap): Promise<ProfilesOptions> {
  const stored = await putBytes(bucket, `platemaps/${prepared.sha256}.csv`, prepared.text, 'text/csv');
  return profilesOptionsSchema.parse({
    platemap: { uri: stored.uri, sha256: prepared.sha256, fileName: path.basename(prepared.request.file) },
    controls: prepared.check.controls,
    normalization: prepared.request.normalization,
    reportFeature: prepared.request.reportFeature,
  });
}

/** `--append` to an experiment with a platemap: the new image sets' wells must be in it too. */
export async function checkAppendedWells(pool: Db, experimentId: number, sets: readonly { key: string; metadata: Record<string, string> }[]): Promise<void> {
  const options = await getProfilesOptions(pool, experimentId);
  if (!options) return;
  const { bucket, key } = parseS3Uri(options.platemap.uri);
  const platemap = parsePlatemap((await getBytes(bucket, key)).toString('utf8'), options.platemap.fileName);
  const unknown = [...new Set(wellsOfSets(sets, options.platemap.fileName))].filter((w) => !platemap.wells.has(w)).sort();
  if (unknown.length > 0) {
    throw new UsageError(`--append: wells ${unknown.slice(0, 5).join(', ')} are not in the experiment's platemap ${options.platemap.fileName}`);
  }
}

/** One line for the submit output. */
export function describePlatemap(prepared: PreparedPlatemap): string {
  const { check } = prepared;
  const controls = check.controls ? `${check.controlWells} control wells (${check.controls.column}=${check.controls.value})` : 'no controls: normalised against whole plates';
  return `platemap ${path.basename(prepared.request.file)}: ${check.wells} wells, ${controls}, normalisation ${prepared.request.normalization ?? DEFAULTS.PROFILES_NORMALIZATION}`;
}
