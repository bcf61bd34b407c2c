/**
 * The error vocabulary shared by the CLI, workers and activities, and the one place that decides
 * whether a failure is an outage (worth retrying without limit) and how it reads in one line.
 */

/** A bad setting: named with its variable and value (config.ts). */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Bad arguments or input given by the person at the terminal: exit 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export class DatabaseUnavailableError extends Error {
  constructor(where: string, cause: unknown) {
    super(`MariaDB unreachable at ${where}: ${messageOf(cause)}`);
    this.name = 'DatabaseUnavailableError';
  }
}

/**
 * MariaDB answered and refused the account (wrong user or password, no grant on the database): a bad
 * setting, so the CLI exits 2, and nothing retries it as if it were an outage.
 */
export class DatabaseAccessDeniedError extends ConfigError {
  constructor(where: string, serverMessage: string) {
    super(`MariaDB at ${where}: ${lowerFirst(serverMessage)} (check CPFLOW_DB_USER, CPFLOW_DB_PASSWORD and CPFLOW_DB_NAME)`);
    this.name = 'DatabaseAccessDeniedError';
  }
}

/** The database's schema is older than this cpflow: `cpflow migrate` (the migration account) must run first. */
export class SchemaOutdatedError extends Error {
  constructor(where: string, found: number, needed: number) {
    super(
      `MariaDB at ${where}: schema version ${found}, this cpflow needs ${needed}; ` +
        'run `cpflow migrate` with the migration account (CPFLOW_DB_MIGRATE_USER / CPFLOW_DB_MIGRATE_PASSWORD)',
    );
    this.name = 'SchemaOutdatedError';
  }
}

const lowerFirst = (s: string): string => s.charAt(0).toLowerCase() + s.slice(1);

export class TemporalUnavailableError extends Error {
  constructor(address: string, cause: unknown) {
    super(`Temporal unreachable at ${address}: ${messageOf(cause)}`);
    this.name = 'TemporalUnavailableError';
  }
}

export const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

const TRANSIENT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);
const TRANSIENT_MESSAGE = /ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND|socket hang up/;

/** A network-level failure to reach a service (as opposed to the service answering with an error). */
export function isConnectionFailure(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as NodeJS.ErrnoException).code;
  return (code !== undefined && TRANSIENT_CODES.has(code)) || TRANSIENT_MESSAGE.test(err.message) || err.name === 'TimeoutError';
}

/** S3 or database unavailable, throttling or 5xx: an outage, worth retrying without limit. */
export function isInfrastructureError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err instanceof DatabaseUnavailableError) return true;
  if (isConnectionFailure(err)) return true;
  const e = err as Error & { $metadata?: { httpStatusCode?: number }; $retryable?: unknown; fatal?: boolean };
  if (e.name === 'SlowDown' || e.$retryable) return true;
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined && (status >= 500 || status === 429)) return true;
  return e.fatal === true; // a mariadb connection that died
}

/** What an S3 service error carries (the AWS SDK's S3ServiceException, duck-typed so tests can build one). */
interface S3Failure {
  code: string;
  status?: number;
  bucket?: string;
  key?: string;
  message: string;
}

function s3FailureOf(err: unknown): S3Failure | undefined {
  if (!(err instanceof Error)) return undefined;
  const e = err as Error & { $metadata?: { httpStatusCode?: number }; Code?: string; BucketName?: string; Key?: string; $fault?: string };
  if (e.$metadata === undefined || e.$fault === undefined) return undefined;
  return { code: e.Code ?? e.name, status: e.$metadata.httpStatusCode, bucket: e.BucketName, key: e.Key, message: e.message };
}

/** Wrong S3 access key or secret, or MariaDB refusing the account: settings to fix, not outages. */
export function isCredentialFailure(err: unknown): boolean {
  if (err instanceof DatabaseAccessDeniedError) return true;
  const s3 = s3FailureOf(err);
  return s3 !== undefined && (s3.code === 'InvalidAccessKeyId' || s3.code === 'SignatureDoesNotMatch');
}

/** One line for an S3 service error, naming the endpoint, what was asked for and the setting to check. */
function describeS3Failure(f: S3Failure, where: string): string {
  const target = f.bucket ? (f.key ? `s3://${f.bucket}/${f.key}` : `bucket ${f.bucket}`) : undefined;
  switch (f.code) {
    case 'InvalidAccessKeyId':
      return `S3 at ${where}: the access key is not known there (InvalidAccessKeyId); check CPFLOW_S3_ACCESS_KEY`;
    case 'SignatureDoesNotMatch':
      return `S3 at ${where}: the secret key does not match the access key (SignatureDoesNotMatch); check CPFLOW_S3_SECRET_KEY`;
    case 'AccessDenied':
      return `S3 at ${where}: access denied${target ? ` to ${target}` : ''} for the account in CPFLOW_S3_ACCESS_KEY (AccessDenied)`;
    case 'NoSuchBucket':
      return `S3 at ${where}: ${target ?? 'the bucket'} does not exist (NoSuchBucket)`;
    case 'InvalidBucketName':
      return `S3 at ${where}: ${target ?? 'the bucket'} is not a valid bucket name (InvalidBucketName)`;
    default: {
      // HEAD requests come back without a body, so the SDK can only say "UnknownError": give the status.
      const detail = f.message && f.message !== 'UnknownError' && f.message !== f.code ? `: ${f.message}` : '';
      return `S3 at ${where}: ${f.code === 'Unknown' || f.code === 'UnknownError' ? 'error' : f.code}${f.status ? ` (HTTP ${f.status})` : ''}${target ? ` on ${target}` : ''}${detail}`;
    }
  }
}

/**
 * One line for any failure. A connection failure that no service has named yet (the AWS SDK's own
 * errors do not say where they tried) is attributed to S3 at `s3Endpoint`.
 */
export function describeError(err: unknown, s3Endpoint: () => string): string {
  if (!(err instanceof Error)) return String(err);
  const s3 = s3FailureOf(err);
  if (s3) return describeS3Failure(s3, endpointOr(s3Endpoint));
  // The MariaDB connector's messages carry the whole SQL statement on further lines: the server's own
  // sentence is the part a person needs.
  const { sqlMessage, errno } = err as Error & { sqlMessage?: string; errno?: number };
  if (typeof sqlMessage === 'string' && typeof errno === 'number') return `MariaDB: ${sqlMessage}`;
  const named = err instanceof DatabaseUnavailableError || err instanceof TemporalUnavailableError || /MariaDB|Temporal/.test(err.message);
  if (isConnectionFailure(err) && !named) {
    return `S3 unreachable at ${endpointOr(s3Endpoint)}: ${err.message || (err as NodeJS.ErrnoException).code}`;
  }
  return err.message;
}

function endpointOr(s3Endpoint: () => string): string {
  try {
    return s3Endpoint();
  } catch {
    return '(unset)'; // settings invalid: the configuration error is reported elsewhere
  }
}
