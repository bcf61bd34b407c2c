import crypto from 'node:crypto';
import { UsageError } from './errors';
import * as DEFAULTS from './model/defaults';

/**
 * What cpflow accepts as project, experiment and bucket names, and how a project's bucket is derived.
 * Everything here is checked before anything is uploaded or any row or bucket is created.
 *
 * - Project and experiment names are any Unicode text up to the length their columns hold, except
 *   control characters, path separators (`/`, `\`), `..`, and leading or trailing spaces. They are
 *   kept in normal form C and compare exactly (binary collation): `Plate1` and `plate1` are different
 *   experiments.
 * - A new project's name may not differ from an existing one only in case, accents or separators
 *   (`bi-UPPER_case` vs `bi-upper-case`): `foldName` gives the form compared.
 * - A project's bucket is `cpflow-<readable part>-<10 hex digits of the name's sha256>`: distinct names
 *   always get distinct buckets (`bi ünïcode 项目 ☃` no longer becomes `cpflow-bi-n-code`), and the
 *   database records which project owns which bucket, refusing a second owner.
 */

/** Column widths (core/db/migrations/001_initial.sql), in characters. */
export const PROJECT_NAME_MAX = 128;
export const EXPERIMENT_NAME_MAX = 200;
export const SET_KEY_MAX = 200;
export const CHANNEL_MAX = 100;
/** image_file.uri is VARCHAR(1024); S3 keys are at most 1024 bytes. */
export const INPUT_URI_MAX = 1024;

const HASH_DIGITS = 10;

function nameProblem(name: string, max: number): string | undefined {
  if (name.length === 0) return 'is empty';
  if ([...name].length > max) return `is ${[...name].length} characters long; at most ${max} are allowed`;
  if (name !== name.trim()) return 'starts or ends with a space';
  if (/\p{Cc}/u.test(name)) return 'contains a control character';
  if (/[/\\]/.test(name)) return 'contains a path separator (/ or \\)';
  if (name.includes('..')) return 'contains ".."';
  return undefined;
}

/**
 * Names are stored in Unicode normal form C, so `ü` typed as one code point or as `u` + combining
 * diaeresis (as some file systems and keyboards produce it) names the same project.
 */
export const canonicalName = (name: string): string => name.normalize('NFC');

export function validateProjectName(name: string): void {
  const problem = nameProblem(name, PROJECT_NAME_MAX);
  if (problem) throw new UsageError(`--project ${JSON.stringify(name)} ${problem}`);
}

export function validateExperimentName(name: string): void {
  const problem = nameProblem(name, EXPERIMENT_NAME_MAX);
  if (problem) throw new UsageError(`--name ${JSON.stringify(name)} ${problem}`);
}

/**
 * The form two project names are compared in to tell whether one would be mistaken for the other:
 * compatibility-decomposed, accents dropped, lower case, runs of space, `-`, `_` and `.` as one `-`.
 */
export function foldName(name: string): string {
  return name
    .normalize('NFKD')
    .replace(/\p{M}+/gu, '')
    .toLowerCase()
    .replace(/[\s._-]+/g, '-')
    .replace(/^-+|-+$/g, '');
}

/** The bucket a new project gets: readable, unique per exact name, always a valid S3 bucket name. */
export function bucketForProject(project: string): string {
  const hash = crypto.createHash('sha256').update(project, 'utf8').digest('hex').slice(0, HASH_DIGITS);
  const room = 63 - DEFAULTS.BUCKET_PREFIX.length - 1 - HASH_DIGITS;
  const readable = project
    .normalize('NFKD')
    .replace(/\p{M}+/gu, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+/, '')
    .slice(0, room)
    .replace(/-+$/, '');
  return `${DEFAULTS.BUCKET_PREFIX}${readable ? `${readable}-` : ''}${hash}`;
}

/** Why `bucket` is not a usable S3 bucket name (AWS's rules, which MinIO follows), or undefined. */
export function bucketNameProblem(bucket: string): string | undefined {
  if (bucket.length < 3 || bucket.length > 63) return `is ${bucket.length} characters long; bucket names have 3 to 63`;
  if (!/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(bucket)) return 'may hold only lower-case letters, digits, "-" and ".", and must start and end with a letter or digit';
  if (bucket.includes('..') || bucket.includes('.-') || bucket.includes('-.')) return 'has ".." or a "." next to a "-"';
  if (/^\d+\.\d+\.\d+\.\d+$/.test(bucket)) return 'looks like an IP address';
  if (bucket.startsWith('xn--') || bucket.startsWith('sthree-')) return 'starts with a reserved prefix (xn--, sthree-)';
  if (bucket.endsWith('-s3alias') || bucket.endsWith('--ol-s3')) return 'ends with a reserved suffix (-s3alias, --ol-s3)';
  return undefined;
}

export function validateBucketName(bucket: string, option = '--bucket'): void {
  const problem = bucketNameProblem(bucket);
  if (problem) throw new UsageError(`${option} ${JSON.stringify(bucket)} ${problem}`);
}
