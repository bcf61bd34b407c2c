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

/**
 * One line for any failure. A connection failure that no service has named yet (the AWS SDK's own
 * errors do not say where they tried) is attributed to S3 at `s3Endpoint`.
 */
export function describeError(err: unknown, s3Endpoint: () => string): string {
  if (!(err instanceof Error)) return String(err);
  const named = err instanceof DatabaseUnavailableError || err instanceof TemporalUnavailableError || /MariaDB|Temporal/.test(err.message);
  if (isConnectionFailure(err) && !named) {
    let where = '(unset)';
    try {
      where = s3Endpoint();
    } catch {
      // Settings invalid: the configuration error is reported elsewhere.
    }
    return `S3 unreachable at ${where}: ${err.message || (err as NodeJS.ErrnoException).code}`;
  }
  return err.message;
}
