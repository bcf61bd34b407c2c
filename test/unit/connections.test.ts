import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, dbConfig, s3Config, temporalConfig } from '../../core/config';
import { dbTlsOptions } from '../../core/db/pool';
import { createS3Client } from '../../core/s3';
import { describeTemporal, temporalSettings } from '../../core/temporal-settings';
import { tracingEnabled } from '../../core/tracing';

/**
 * How cpflow reads its connections: Temporal through @temporalio/envconfig (its variables, TOML
 * profiles, CPFLOW_TEMPORAL_* aliases), MariaDB TLS, S3 region and credentials from the AWS chain.
 */

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-connections-'));
const pem = (name: string, body: string): string => {
  const file = path.join(dir, name);
  fs.writeFileSync(file, `-----BEGIN CERTIFICATE-----\n${body}\n-----END CERTIFICATE-----\n`);
  return file;
};
const ca = pem('ca.crt', 'Q0E=');
const cert = pem('client.crt', 'Q0VSVA==');
const key = pem('client.key', 'S0VZ');
/** No HOME: the default TOML file (~/.config/temporalio/temporal.toml) of the machine never leaks in. */
const clean = (env: Record<string, string>): NodeJS.ProcessEnv => ({ ...env });

describe('Temporal settings', () => {
  it('defaults to the local plaintext frontend', () => {
    expect(temporalSettings(clean({}))).toEqual({ address: '127.0.0.1:7233', namespace: 'default', apiKey: undefined, tls: undefined, metadata: undefined });
  });

  it("reads envconfig's TEMPORAL_* variables, and CPFLOW_TEMPORAL_* aliases win over them", () => {
    expect(temporalSettings(clean({ TEMPORAL_ADDRESS: 'temporal.lab:7233', TEMPORAL_NAMESPACE: 'imaging' }))).toMatchObject({ address: 'temporal.lab:7233', namespace: 'imaging' });
    expect(temporalSettings(clean({ TEMPORAL_ADDRESS: 'a:1', CPFLOW_TEMPORAL_ADDRESS: 'b:2' })).address).toBe('b:2');
    expect(temporalConfig(clean({ TEMPORAL_NAMESPACE: 'x' })).CPFLOW_TEMPORAL_NAMESPACE).toBe('x');
  });

  it('turns TLS on for an API key (Temporal Cloud) and never shows the key', () => {
    const settings = temporalSettings(clean({ TEMPORAL_ADDRESS: 'us-east-1.aws.api.temporal.io:7233', TEMPORAL_NAMESPACE: 'ns.acct', TEMPORAL_API_KEY: 'secret-key-123' }));
    expect(settings.apiKey).toBe('secret-key-123');
    expect(settings.tls).toBe(true);
    expect(describeTemporal(settings)).toBe('us-east-1.aws.api.temporal.io:7233 namespace ns.acct, TLS, API key');
    expect(describeTemporal(settings)).not.toContain('secret-key-123');
  });

  it('reads mTLS files (CA, client pair, server name) through the aliases', () => {
    const settings = temporalSettings(
      clean({
        CPFLOW_TEMPORAL_ADDRESS: '10.0.0.1:7233',
        CPFLOW_TEMPORAL_TLS_SERVER_CA_CERT_PATH: ca,
        CPFLOW_TEMPORAL_TLS_CLIENT_CERT_PATH: cert,
        CPFLOW_TEMPORAL_TLS_CLIENT_KEY_PATH: key,
        CPFLOW_TEMPORAL_TLS_SERVER_NAME: 'temporal-frontend',
      }),
    );
    expect(settings.tls).toMatchObject({ serverNameOverride: 'temporal-frontend' });
    const tls = settings.tls as { serverRootCACertificate: Uint8Array; clientCertPair: { crt: Uint8Array; key: Uint8Array } };
    expect(Buffer.from(tls.serverRootCACertificate).toString()).toContain('Q0E=');
    expect(Buffer.from(tls.clientCertPair.key).toString()).toContain('S0VZ');
    expect(describeTemporal(settings)).toBe('10.0.0.1:7233 namespace default, mTLS (server name temporal-frontend)');
  });

  it('reads a profile from a TOML file, environment variables on top', () => {
    const toml = path.join(dir, 'temporal.toml');
    fs.writeFileSync(
      toml,
      ['[profile.default]', 'address = "default.example:7233"', '', '[profile.prod]', 'address = "prod.example:7233"', 'namespace = "prod-ns"', 'api_key = "from-file"', ''].join('\n'),
    );
    expect(temporalSettings(clean({ TEMPORAL_CONFIG_FILE: toml })).address).toBe('default.example:7233');
    const prod = temporalSettings(clean({ TEMPORAL_CONFIG_FILE: toml, TEMPORAL_PROFILE: 'prod', TEMPORAL_NAMESPACE: 'override' }));
    expect(prod).toMatchObject({ address: 'prod.example:7233', namespace: 'override', apiKey: 'from-file', tls: true });
    expect(() => temporalSettings(clean({ TEMPORAL_CONFIG_FILE: toml, TEMPORAL_PROFILE: 'nope' }))).toThrow(ConfigError);
  });

  it('refuses half an mTLS pair, a missing file and a bad address, naming the setting', () => {
    expect(() => temporalSettings(clean({ TEMPORAL_TLS_CLIENT_CERT_PATH: cert }))).toThrow(/client certificate and its key/);
    expect(() => temporalSettings(clean({ TEMPORAL_TLS_SERVER_CA_CERT_PATH: path.join(dir, 'missing.crt') }))).toThrow(ConfigError);
    expect(() => temporalSettings(clean({ TEMPORAL_ADDRESS: 'no-port' }))).toThrow(/TEMPORAL_ADDRESS="no-port": expected host:port/);
  });
});

describe('MariaDB TLS', () => {
  it('is off by default and on with a CA or client certificate, verifying the server unless told not to', () => {
    expect(dbTlsOptions(dbConfig({}))).toBeUndefined();
    expect(dbTlsOptions(dbConfig({ CPFLOW_DB_TLS: 'true' }))).toMatchObject({ rejectUnauthorized: true, ca: undefined });
    const full = dbTlsOptions(dbConfig({ CPFLOW_DB_TLS_CA: ca, CPFLOW_DB_TLS_CERT: cert, CPFLOW_DB_TLS_KEY: key })) as { ca: Buffer; cert: Buffer; key: Buffer; rejectUnauthorized: boolean };
    expect(full.rejectUnauthorized).toBe(true);
    expect(full.cert.toString()).toContain('Q0VSVA==');
    expect(dbTlsOptions(dbConfig({ CPFLOW_DB_TLS: '1', CPFLOW_DB_TLS_VERIFY_SERVER: 'false' }))).toMatchObject({ rejectUnauthorized: false });
  });

  it('refuses a certificate without its key and an unreadable file', () => {
    expect(() => dbTlsOptions(dbConfig({ CPFLOW_DB_TLS_CERT: cert }))).toThrow(/CPFLOW_DB_TLS_CERT and CPFLOW_DB_TLS_KEY go together/);
    expect(() => dbTlsOptions(dbConfig({ CPFLOW_DB_TLS_CA: path.join(dir, 'missing.crt') }))).toThrow(/CPFLOW_DB_TLS_CA=/);
    expect(() => dbConfig({ CPFLOW_DB_TLS: 'yes' })).toThrow(/CPFLOW_DB_TLS="yes"/);
  });
});

describe('S3 region and credentials', () => {
  const saved = { ...process.env };
  afterEach(() => {
    process.env = { ...saved };
  });

  it('takes the region from CPFLOW_S3_REGION, else the AWS chain, else us-east-1 only for a custom endpoint', async () => {
    delete process.env.AWS_REGION;
    delete process.env.AWS_DEFAULT_REGION;
    process.env.AWS_CONFIG_FILE = path.join(dir, 'no-aws-config');
    expect(await createS3Client(s3Config({ CPFLOW_S3_REGION: 'eu-central-1' })).config.region()).toBe('eu-central-1');
    process.env.AWS_REGION = 'ap-southeast-2';
    expect(await createS3Client(s3Config({})).config.region()).toBe('ap-southeast-2');
    delete process.env.AWS_REGION;
    expect(await createS3Client(s3Config({ CPFLOW_S3_ENDPOINT: 'http://minio:9000' })).config.region()).toBe('us-east-1');
    await expect(createS3Client(s3Config({})).config.region()).rejects.toThrow(/no S3 region: set CPFLOW_S3_REGION or AWS_REGION/);
  });

  it('leaves credentials to the AWS chain unless both keys are set', async () => {
    process.env.AWS_ACCESS_KEY_ID = 'AKIAFROMCHAIN';
    process.env.AWS_SECRET_ACCESS_KEY = 'chain-secret';
    const fromChain = await createS3Client(s3Config({ CPFLOW_S3_REGION: 'x' })).config.credentials();
    expect(fromChain.accessKeyId).toBe('AKIAFROMCHAIN');
    const explicit = await createS3Client(s3Config({ CPFLOW_S3_REGION: 'x', CPFLOW_S3_ACCESS_KEY: 'mine', CPFLOW_S3_SECRET_KEY: 'also-mine' })).config.credentials();
    expect(explicit.accessKeyId).toBe('mine');
  });
});

describe('tracing', () => {
  it('is off unless an OTLP endpoint is set, and a bad endpoint is named', () => {
    expect(tracingEnabled({})).toBe(false);
    expect(tracingEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' })).toBe(true);
    expect(tracingEnabled({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' })).toBe(true);
    expect(() => tracingEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector' })).toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT="collector"/);
  });
});
