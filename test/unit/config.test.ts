import { ConfigError, dbConfig, s3Config, temporalConfig, validateSettings, workerConfig } from '../../core/config';
import { DatabaseAccessDeniedError, DatabaseUnavailableError, describeError, isCredentialFailure, isInfrastructureError } from '../../core/errors';

describe('configuration from the environment', () => {
  it('fills defaults', () => {
    expect(dbConfig({})).toMatchObject({ CPFLOW_DB_HOST: '127.0.0.1', CPFLOW_DB_PORT: 3306, CPFLOW_DB_NAME: 'cpflow' });
    expect(temporalConfig({})).toMatchObject({ CPFLOW_TEMPORAL_ADDRESS: '127.0.0.1:7233', CPFLOW_TEMPORAL_NAMESPACE: 'default' });
    expect(s3Config({}).CPFLOW_S3_FORCE_PATH_STYLE).toBe(true);
  });

  it('names every bad variable with its value', () => {
    let message = '';
    try {
      dbConfig({ CPFLOW_DB_PORT: '99999', CPFLOW_DB_NAME: 'drop table;' });
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      message = (err as Error).message;
    }
    expect(message).toContain('CPFLOW_DB_PORT="99999"');
    expect(message).toContain('CPFLOW_DB_NAME="drop table;"');
    expect(() => temporalConfig({ CPFLOW_TEMPORAL_ADDRESS: 'localhost' })).toThrow(/CPFLOW_TEMPORAL_ADDRESS="localhost": expected host:port/);
    expect(() => workerConfig({ CPFLOW_ANALYZE_SLOTS: '0' })).toThrow(/CPFLOW_ANALYZE_SLOTS="0"/);
    expect(() => s3Config({ CPFLOW_S3_ENDPOINT: 'not a url' })).toThrow(/CPFLOW_S3_ENDPOINT/);
  });
});

describe('telling outages from engine failures', () => {
  it('treats network errors, 5xx, throttling and a lost database as infrastructure', () => {
    expect(isInfrastructureError(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9000'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(isInfrastructureError(Object.assign(new Error('We encountered an internal error'), { $metadata: { httpStatusCode: 503 } }))).toBe(true);
    expect(isInfrastructureError(Object.assign(new Error('Please reduce your request rate'), { name: 'SlowDown' }))).toBe(true);
    expect(isInfrastructureError(new DatabaseUnavailableError('127.0.0.1:3306', new Error('down')))).toBe(true);
  });

  it('treats access denied, engine crashes and anything else as the engine’s own failure', () => {
    expect(isInfrastructureError(Object.assign(new Error('Access Denied'), { $metadata: { httpStatusCode: 403 } }))).toBe(false);
    expect(isInfrastructureError(new Error('cellprofiler exited with code 1'))).toBe(false);
    expect(isInfrastructureError('a string')).toBe(false);
  });
});

describe('every setting at start-up', () => {
  it('names every bad variable at once, including ones a command or pool does not use', () => {
    expect(() => validateSettings({ CPFLOW_DB_PORT: 'abc', CPFLOW_S3_ENDPOINT: 'not a url', CPFLOW_MAX_IMAGE_PIXELS: '-1' })).toThrow(ConfigError);
    let message = '';
    try {
      validateSettings({ CPFLOW_DB_PORT: 'abc', CPFLOW_S3_ENDPOINT: 'not a url', CPFLOW_MAX_IMAGE_PIXELS: '-1' });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/^invalid configuration: /);
    expect(message).toContain('CPFLOW_DB_PORT="abc"');
    expect(message).toContain('CPFLOW_S3_ENDPOINT="not a url"');
    expect(message).toContain('CPFLOW_MAX_IMAGE_PIXELS="-1"');
    expect(() => validateSettings({})).not.toThrow();
  });

  it('binds worker metrics to loopback unless told', () => {
    expect(workerConfig({}).CPFLOW_METRICS_HOST).toBe('127.0.0.1');
    expect(workerConfig({ CPFLOW_METRICS_HOST: '0.0.0.0' }).CPFLOW_METRICS_HOST).toBe('0.0.0.0');
  });
});

describe('honest errors', () => {
  const s3Error = (code: string, status: number, extra: Record<string, string> = {}) =>
    Object.assign(new Error(code === 'Unknown' ? 'UnknownError' : `${code} message`), { name: code, Code: code, $fault: 'client', $metadata: { httpStatusCode: status }, ...extra });
  const where = () => 'http://127.0.0.1:9000';

  it('says which S3 credential is wrong, and counts it as a setting to fix', () => {
    const unknownKey = s3Error('InvalidAccessKeyId', 403);
    expect(describeError(unknownKey, where)).toBe('S3 at http://127.0.0.1:9000: the access key is not known there (InvalidAccessKeyId); check CPFLOW_S3_ACCESS_KEY');
    const wrongSecret = s3Error('SignatureDoesNotMatch', 403);
    expect(describeError(wrongSecret, where)).toBe(
      'S3 at http://127.0.0.1:9000: the secret key does not match the access key (SignatureDoesNotMatch); check CPFLOW_S3_SECRET_KEY',
    );
    expect(isCredentialFailure(unknownKey) && isCredentialFailure(wrongSecret)).toBe(true);
    expect(isInfrastructureError(wrongSecret)).toBe(false);
  });

  it('names the bucket or object S3 refused, and never prints a bare "UnknownError"', () => {
    expect(describeError(s3Error('AccessDenied', 403, { BucketName: 'other', Key: 'a/b.tif' }), where)).toBe(
      'S3 at http://127.0.0.1:9000: access denied to s3://other/a/b.tif for the account in CPFLOW_S3_ACCESS_KEY (AccessDenied)',
    );
    expect(describeError(s3Error('Unknown', 400, { BucketName: 'x' }), where)).toBe('S3 at http://127.0.0.1:9000: error (HTTP 400) on bucket x');
    expect(isCredentialFailure(s3Error('AccessDenied', 403))).toBe(false);
  });

  it('prints MariaDB’s own sentence, never the SQL statement the connector appends', () => {
    const err = Object.assign(new Error("(conn:7, no: 1062, SQLState: 23000) Duplicate entry '1-plate' for key 'uq_experiment_name'\nsql: INSERT INTO experiment (…) VALUES (?, ?) - parameters:[1,'plate']"), {
      errno: 1062,
      sqlMessage: "Duplicate entry '1-plate' for key 'uq_experiment_name'",
    });
    expect(describeError(err, where)).toBe("MariaDB: Duplicate entry '1-plate' for key 'uq_experiment_name'");
  });

  it('says access denied for a refused MariaDB login, with the account and the address', () => {
    const err = new DatabaseAccessDeniedError('127.0.0.1:3306', "Access denied for user 'cpflow'@'127.0.0.1' (using password: YES)");
    expect(err.message).toBe(
      "MariaDB at 127.0.0.1:3306: access denied for user 'cpflow'@'127.0.0.1' (using password: YES) (check CPFLOW_DB_USER, CPFLOW_DB_PASSWORD and CPFLOW_DB_NAME)",
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect(isCredentialFailure(err)).toBe(true);
    expect(isInfrastructureError(err)).toBe(false);
  });
});
