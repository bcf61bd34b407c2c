import fs from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import * as mariadb from 'mariadb';
import { dbConfig, s3Config } from '../../core/config';
import { createPool, requiredSchemaVersion } from '../../core/db';
import { stackAdminEnv } from '../../deploy/local/services';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import { migrationDbConfig } from '../support/admin';
import { requireStack, runCli, startProcess, tempDir, teardown, uniqueName } from '../support/harness';

/**
 * Honest errors and least privilege on the real stack (issue 9): each failure is one line naming the
 * thing and the cause, usage errors exit 2 (commander's too), every process validates every setting
 * at start-up, and the accounts cpflow's processes hold can do their work and nothing more.
 */
jest.setTimeout(300_000);

beforeAll(() => requireStack());
afterAll(() => teardown());

let plateDir: string | undefined;
async function smallPlate(): Promise<string> {
  if (!plateDir) {
    plateDir = tempDir('honest');
    await generateSyntheticPlate({ outDir: plateDir, rows: 1, cols: 1, size: 64 });
    fs.rmSync(path.join(plateDir, 'ground-truth.json'));
  }
  return plateDir;
}

const oneLine = (stderr: string): string => {
  const lines = stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  return lines[0]!;
};

/** A worker entry point run until it exits (it should refuse to start). */
async function workerExit(env: NodeJS.ProcessEnv, entry = 'workers/cellprofiler.ts', args: string[] = []): Promise<{ code: number | null; output: string }> {
  const p = startProcess(entry, args, env);
  const code = await new Promise<number | null>((resolve) => p.child.once('exit', (c) => resolve(c)));
  return { code, output: p.output() };
}

describe('credentials and settings', () => {
  it('a wrong MariaDB password says access denied for the user at host:port, at once, exit 2', async () => {
    const { CPFLOW_DB_HOST: host, CPFLOW_DB_PORT: port } = dbConfig();
    const started = Date.now();
    const r = await runCli(['list'], { CPFLOW_DB_PASSWORD: 'wrong-password' });
    const seconds = (Date.now() - started) / 1000;
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(
      `cpflow: MariaDB at ${host}:${port}: access denied for user 'cpflow'@'127.0.0.1' (using password: YES) (check CPFLOW_DB_USER, CPFLOW_DB_PASSWORD and CPFLOW_DB_NAME)`,
    );
    // The pool used to retry the refused login until its 10 s acquire time-out, then call MariaDB unreachable.
    expect(seconds).toBeLessThan(8);
  });

  it('a wrong S3 access key or secret key says which, exit 2, and leaves nothing behind', async () => {
    const dir = await smallPlate();
    const project = uniqueName('s3creds');
    const submitArgs = ['submit', '--project', project, '--name', 'e', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin'];
    const { CPFLOW_S3_ENDPOINT: endpoint } = s3Config();
    const badKey = await runCli(submitArgs, { CPFLOW_S3_ACCESS_KEY: 'no-such-access-key' });
    expect(badKey.code).toBe(2);
    expect(oneLine(badKey.stderr)).toBe(`cpflow: S3 at ${endpoint}: the access key is not known there (InvalidAccessKeyId); check CPFLOW_S3_ACCESS_KEY`);
    const badSecret = await runCli(submitArgs, { CPFLOW_S3_SECRET_KEY: 'not-the-secret-key' });
    expect(badSecret.code).toBe(2);
    expect(oneLine(badSecret.stderr)).toBe(
      `cpflow: S3 at ${endpoint}: the secret key does not match the access key (SignatureDoesNotMatch); check CPFLOW_S3_SECRET_KEY`,
    );
    const listed = await runCli(['list', '--project', project]);
    expect(listed.stdout.trim()).toBe('no experiments');
  });

  it('names a directory or a binary file given as --pipeline without printing its bytes', async () => {
    const dir = await smallPlate();
    const binary = path.join(tempDir('pipeline'), 'pipeline.cppipe');
    fs.writeFileSync(binary, Buffer.from([0x00, 0x01, 0xff, 0xfe, 0x00, 0x80, 0x81, 0x82]));
    const base = ['submit', '--project', uniqueName('pipe'), '--name', 'e', '--folder', dir, '--grouping', 'synthetic'];
    const asDir = await runCli([...base, '--pipeline', dir]);
    expect({ code: asDir.code, line: oneLine(asDir.stderr) }).toEqual({ code: 2, line: `cpflow: --pipeline ${dir}: is a directory, not a CellProfiler pipeline file` });
    const asBinary = await runCli([...base, '--pipeline', binary]);
    expect({ code: asBinary.code, line: oneLine(asBinary.stderr) }).toEqual({
      code: 2,
      line: `cpflow: --pipeline ${binary}: not a CellProfiler text pipeline: it is a binary file (8 bytes)`,
    });
  });

  it('exits 2 on commander’s own usage errors, as on any other bad argument', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['submit', '--project', 'p', '--name', 'n', '--grouping', 'synthetic', '--no-such-flag'], /unknown option '--no-such-flag'/],
      [['submit', '--project', 'p', '--grouping', 'synthetic'], /required option '--name <name>' not specified/],
      [['submit', '--project', 'p', '--name', 'n', '--grouping', 'synthetic', '--engine', 'gpu'], /argument 'gpu' is invalid. Allowed choices are auto, builtin, cellprofiler/],
      [['submit', '--project', 'p', '--name', 'n', '--grouping', 'synthetic', '--batch-size', 'many'], /--batch-size must be an integer ≥ 1, got "many"/],
      [['status'], /missing required argument 'experiment'/],
      [['frobnicate'], /unknown command 'frobnicate'/],
      [[], /Usage: cpflow/],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(args);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.stderr).toMatch(message);
    }
    const help = await runCli(['--help']);
    expect(help.code).toBe(0);
    // The stack's own CLI too.
    const stack = await workerExit({}, 'deploy/local/stack.ts', ['stop']);
    expect({ code: stack.code, output: stack.output.trim() }).toEqual({ code: 2, output: "error: missing required argument 'service'" });
  });

  it('every worker pool validates every setting at start-up, exit 2 naming the variable', async () => {
    const dbPort = await workerExit({ CPFLOW_DB_PORT: 'abc' });
    expect(dbPort.code).toBe(2);
    expect(dbPort.output).toContain('cpflow worker: invalid configuration: CPFLOW_DB_PORT="abc"');
    const endpoint = await workerExit({ CPFLOW_S3_ENDPOINT: 'not a url' }, 'workers/reduce.ts');
    expect(endpoint.code).toBe(2);
    expect(endpoint.output).toContain('cpflow worker: invalid configuration: CPFLOW_S3_ENDPOINT="not a url"');
    const secret = await workerExit({ CPFLOW_S3_SECRET_KEY: 'not-the-secret-key' });
    expect(secret.code).toBe(2);
    expect(secret.output).toContain('(SignatureDoesNotMatch); check CPFLOW_S3_SECRET_KEY');
    const password = await workerExit({ CPFLOW_DB_PASSWORD: 'wrong-password' }, 'workers/workflow.ts');
    expect(password.code).toBe(2);
    expect(password.output).toContain("access denied for user 'cpflow'@'127.0.0.1'");
  });

  it('a runtime process on an old schema names the command to run; `cpflow migrate` with the migration account brings it up', async () => {
    const database = `cpflow_schema_${Date.now().toString(36)}`;
    const admin = await mariadb.createConnection({ ...connectionOf(await migrationDbConfig()) });
    try {
      await admin.query(`CREATE DATABASE ${database}`);
      const { CPFLOW_DB_HOST: host, CPFLOW_DB_PORT: port } = dbConfig();
      const behind = await runCli(['list'], { CPFLOW_DB_NAME: database });
      expect(behind.code).toBe(1);
      expect(oneLine(behind.stderr)).toBe(
        `cpflow: MariaDB at ${host}:${port}: schema version 0, this cpflow needs ${requiredSchemaVersion()}; ` +
          'run `cpflow migrate` with the migration account (CPFLOW_DB_MIGRATE_USER / CPFLOW_DB_MIGRATE_PASSWORD)',
      );
      // The runtime account cannot migrate: it has no DDL rights.
      const asRuntime = await runCli(['migrate'], { CPFLOW_DB_NAME: database });
      expect(asRuntime.code).toBe(2);
      expect(oneLine(asRuntime.stderr)).toBe(
        `cpflow: MariaDB at ${host}:${port}: CREATE command denied to user 'cpflow'@'127.0.0.1' for table \`${database}\`.\`schema_migration\`: ` +
          '`cpflow migrate` needs the migration account (set CPFLOW_DB_MIGRATE_USER and CPFLOW_DB_MIGRATE_PASSWORD)',
      );
      const creds = await stackAdminEnv();
      const migrated = await runCli(['migrate'], { CPFLOW_DB_NAME: database, CPFLOW_DB_MIGRATE_USER: creds.CPFLOW_DB_MIGRATE_USER, CPFLOW_DB_MIGRATE_PASSWORD: creds.CPFLOW_DB_MIGRATE_PASSWORD });
      expect(migrated.code).toBe(0);
      expect(migrated.stdout).toContain(`as cpflow_migrate: applied 1, 2, 3`);
      expect(migrated.stdout).toContain(`schema version ${requiredSchemaVersion()}`);
      const again = await runCli(['list'], { CPFLOW_DB_NAME: database });
      expect({ code: again.code, out: again.stdout.trim() }).toEqual({ code: 0, out: 'no experiments' });
    } finally {
      await admin.query(`DROP DATABASE IF EXISTS ${database}`);
      await admin.end();
    }
  });
});

const connectionOf = (c: ReturnType<typeof dbConfig>) => ({ host: c.CPFLOW_DB_HOST, port: c.CPFLOW_DB_PORT, user: c.CPFLOW_DB_USER, password: c.CPFLOW_DB_PASSWORD });

describe('least privilege', () => {
  it('the runtime MariaDB account reads and writes rows but cannot drop, create or alter a table', async () => {
    const pool = createPool();
    try {
      const grants = (await pool.query<Array<Record<string, string>>>('SHOW GRANTS')).map((r) => Object.values(r)[0]);
      const onCpflow = grants.find((g) => g?.includes('`cpflow`.*'));
      expect(onCpflow).toMatch(/^GRANT SELECT, INSERT, UPDATE, DELETE ON `cpflow`\.\* TO `cpflow`@`127\.0\.0\.1`$/);
      expect(grants.join('\n')).not.toMatch(/ALL PRIVILEGES|DROP|ALTER|CREATE/);
      await expect(pool.query('SELECT COUNT(*) FROM image_file')).resolves.toBeDefined();
      await expect(pool.query('DROP TABLE result_file')).rejects.toThrow(/DROP command denied to user 'cpflow'/);
      await expect(pool.query('CREATE TABLE intruder (x INT)')).rejects.toThrow(/CREATE command denied to user 'cpflow'/);
      await expect(pool.query('ALTER TABLE image_set ADD COLUMN x INT')).rejects.toThrow(/ALTER command denied to user 'cpflow'/);
      await expect(pool.query('CREATE DATABASE cpflow_intruder')).rejects.toThrow(/Access denied for user 'cpflow'/);
    } finally {
      await pool.end();
    }
  });

  it('cpflow’s S3 user is not MinIO’s root and may touch cpflow-* buckets only', async () => {
    const config = s3Config();
    const admin = await stackAdminEnv();
    expect(config.CPFLOW_S3_ACCESS_KEY).not.toBe(admin.MINIO_ROOT_USER);
    const client = (accessKeyId: string, secretAccessKey: string) =>
      new S3Client({ endpoint: config.CPFLOW_S3_ENDPOINT, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId, secretAccessKey }, maxAttempts: 1 });
    const app = client(config.CPFLOW_S3_ACCESS_KEY!, config.CPFLOW_S3_SECRET_KEY!);
    const root = client(admin.MINIO_ROOT_USER!, admin.MINIO_ROOT_PASSWORD!);
    const suffix = Date.now().toString(36);
    await expect(app.send(new CreateBucketCommand({ Bucket: `labdata-${suffix}` }))).rejects.toMatchObject({ name: 'AccessDenied' });
    await expect(app.send(new CreateBucketCommand({ Bucket: `cpflow-lp-${suffix}` }))).resolves.toBeDefined();
    // Somebody else's bucket on the same server: invisible to cpflow's user.
    await root.send(new CreateBucketCommand({ Bucket: `private-${suffix}` }));
    await root.send(new PutObjectCommand({ Bucket: `private-${suffix}`, Key: 'secret.txt', Body: 'not for cpflow' }));
    await expect(app.send(new GetObjectCommand({ Bucket: `private-${suffix}`, Key: 'secret.txt' }))).rejects.toMatchObject({ name: 'AccessDenied' });
    await expect(app.send(new ListObjectsV2Command({ Bucket: `private-${suffix}` }))).rejects.toMatchObject({ name: 'AccessDenied' });
  });

  it('worker metrics listen on 127.0.0.1 unless told otherwise', async () => {
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const p = startProcess('workers/cellprofiler.ts', [], { CPFLOW_METRICS_PORT: String(port) });
    try {
      await p.waitFor(/cpflow workers running/, 120_000);
      const listening = fs
        .readFileSync('/proc/net/tcp', 'utf8')
        .split('\n')
        .slice(1)
        .map((line) => line.trim().split(/\s+/))
        .filter((f) => f[3] === '0A' && f[1]?.endsWith(`:${port.toString(16).toUpperCase().padStart(4, '0')}`))
        .map((f) => f[1]);
      expect(listening).toEqual([`0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`]);
    } finally {
      await p.stop();
    }
  });

  it('the watcher polls without piling up abort listeners', async () => {
    const p = startProcess('starter/cli.ts', ['watch', '--interval', '100']);
    try {
      await p.waitFor(/polling MariaDB every 100 ms/, 60_000);
      await new Promise((r) => setTimeout(r, 3_000)); // some 30 polls; the old code warned after 10
    } finally {
      await p.stop();
    }
    expect(p.output()).not.toContain('MaxListenersExceededWarning');
  });
});
