import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ListBucketsCommand, S3Client } from '@aws-sdk/client-s3';
import { Client, Connection } from '@temporalio/client';
import mariadb from 'mariadb';
import type { StackEnv } from '../../deploy/local/services';
import { REPO_ROOT } from '../support/harness';
import { allCommandLines, dropSecureStack, useSecureStack, withoutStackSettings } from '../support/secure-stack';

/**
 * The secure local stack (`npm run stack -- up --secure`): the whole demo runs over mTLS to Temporal,
 * TLS with client certificates to MariaDB and HTTPS to MinIO, and a client without TLS (or without a
 * client certificate) is refused by each service. No secret shows up in a log, a workflow payload or a
 * command line.
 */
jest.setTimeout(900_000);

let cache: string | undefined;
let env: StackEnv;
let demoOutput = '';

beforeAll(async () => {
  ({ cache, env } = await useSecureStack('secure'));
});

afterAll(async () => {
  if (cache) await dropSecureStack(cache);
});

function runDemo(cacheDir: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO_ROOT, 'starter', 'demo.ts')], {
      cwd: REPO_ROOT,
      // Only the private stack's own settings: the demo brings it up (secure) and takes them from it.
      env: { ...withoutStackSettings(process.env), CPFLOW_CACHE_DIR: cacheDir, CPFLOW_STACK_SECURE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (b: Buffer) => (output += b.toString()));
    child.stderr.on('data', (b: Buffer) => (output += b.toString()));
    child.once('exit', (code) => resolve({ code, output }));
  });
}

it('runs the whole demo over mTLS and TLS', async () => {
  expect(env.CPFLOW_TEMPORAL_TLS_CLIENT_CERT_PATH).toBeDefined();
  expect(env.CPFLOW_S3_ENDPOINT).toMatch(/^https:\/\//);
  const { code, output } = await runDemo(cache!);
  demoOutput = output;
  expect(output).toMatch(/experiment \d+: done — 16 of 16 image sets done, 0 failed/);
  expect(output).toMatch(/nucleus counts equal to the ground truth in 16 of 16 image sets/);
  expect(code).toBe(0);
});

describe('a client without the secure settings is refused', () => {
  it('Temporal: plaintext, and TLS without a client certificate', async () => {
    const ca = fs.readFileSync(env.CPFLOW_TEMPORAL_TLS_SERVER_CA_CERT_PATH!);
    await expect(Connection.connect({ address: env.CPFLOW_TEMPORAL_ADDRESS, connectTimeout: '3s' })).rejects.toThrow();
    const noClientCert = Connection.connect({ address: env.CPFLOW_TEMPORAL_ADDRESS, connectTimeout: '3s', tls: { serverRootCACertificate: ca } }).then(
      async (connection) => {
        // grpc-js may connect lazily: the first call is where the refusal shows.
        try {
          return await new Client({ connection }).workflowService.getSystemInfo({});
        } finally {
          await connection.close();
        }
      },
    );
    await expect(noClientCert).rejects.toThrow();
    // The control: with the stack's client certificate the same address answers.
    const connection = await Connection.connect({
      address: env.CPFLOW_TEMPORAL_ADDRESS,
      connectTimeout: '5s',
      tls: {
        serverRootCACertificate: ca,
        clientCertPair: { crt: fs.readFileSync(env.CPFLOW_TEMPORAL_TLS_CLIENT_CERT_PATH!), key: fs.readFileSync(env.CPFLOW_TEMPORAL_TLS_CLIENT_KEY_PATH!) },
      },
    });
    try {
      const info = await new Client({ connection }).workflowService.getSystemInfo({});
      expect(info.serverVersion).toBeTruthy();
    } finally {
      await connection.close();
    }
  });

  it('MariaDB: plaintext, and TLS without a client certificate', async () => {
    const account = { host: env.CPFLOW_DB_HOST, port: Number(env.CPFLOW_DB_PORT), user: env.CPFLOW_DB_USER, password: env.CPFLOW_DB_PASSWORD, connectTimeout: 5000 };
    // MariaDB 10.11 checks the account's REQUIRE X509 before require_secure_transport: either way, refused.
    await expect(mariadb.createConnection({ ...account, ssl: false })).rejects.toThrow(/insecure transport|Access denied/i);
    const ca = fs.readFileSync(env.CPFLOW_DB_TLS_CA!);
    await expect(mariadb.createConnection({ ...account, ssl: { ca } })).rejects.toThrow(/Access denied/i);
    const ok = await mariadb.createConnection({
      ...account,
      ssl: { ca, cert: fs.readFileSync(env.CPFLOW_DB_TLS_CERT!), key: fs.readFileSync(env.CPFLOW_DB_TLS_KEY!), rejectUnauthorized: true },
    });
    try {
      const [row] = await ok.query<Array<{ cipher: string }>>("SELECT VARIABLE_VALUE AS cipher FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'");
      expect(row?.cipher).toBeTruthy();
    } finally {
      await ok.end();
    }
  });

  it('MinIO: plain HTTP', async () => {
    const credentials = { accessKeyId: env.CPFLOW_S3_ACCESS_KEY, secretAccessKey: env.CPFLOW_S3_SECRET_KEY };
    const plain = new S3Client({ endpoint: env.CPFLOW_S3_ENDPOINT.replace(/^https:/, 'http:'), region: 'us-east-1', forcePathStyle: true, credentials, maxAttempts: 1 });
    await expect(plain.send(new ListBucketsCommand({}))).rejects.toThrow();
    plain.destroy();
  });
});

it('shows no secret in logs, workflow payloads or command lines', async () => {
  const secrets = [env.CPFLOW_DB_PASSWORD, env.CPFLOW_S3_SECRET_KEY, fs.readFileSync(env.CPFLOW_DB_TLS_KEY!, 'utf8').split('\n')[1]!];
  const logs = ['demo-workers.log', 'demo-watcher.log'].map((file) => fs.readFileSync(path.join(cache!, 'logs', file), 'utf8'));
  const id = /submitted experiment (\d+)/.exec(demoOutput)?.[1];
  expect(id).toBeDefined();
  // The demo's workflow history, payloads decoded, through the secure settings.
  const connection = await Connection.connect({
    address: env.CPFLOW_TEMPORAL_ADDRESS,
    tls: {
      serverRootCACertificate: fs.readFileSync(env.CPFLOW_TEMPORAL_TLS_SERVER_CA_CERT_PATH!),
      clientCertPair: { crt: fs.readFileSync(env.CPFLOW_TEMPORAL_TLS_CLIENT_CERT_PATH!), key: fs.readFileSync(env.CPFLOW_TEMPORAL_TLS_CLIENT_KEY_PATH!) },
    },
  });
  let history = '';
  try {
    const client = new Client({ connection });
    const fetched = await client.workflow.getHandle(`experiment-${id}`).fetchHistory();
    history = JSON.stringify(fetched, (_key, value: unknown) => (value instanceof Uint8Array ? Buffer.from(value).toString('utf8') : value));
  } finally {
    await connection.close();
  }
  expect(history).toMatch(/ImageSetChunkWorkflow|analyzeImageSets/);
  for (const secret of secrets) {
    expect(secret.length).toBeGreaterThan(8);
    for (const text of [demoOutput, ...logs, history, ...allCommandLines()]) expect(text.includes(secret)).toBe(false);
  }
});
