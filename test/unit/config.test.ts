import { ConfigError, dbConfig, s3Config, temporalConfig, workerConfig } from '../../core/config';
import { DatabaseUnavailableError, isInfrastructureError } from '../../core/errors';

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
