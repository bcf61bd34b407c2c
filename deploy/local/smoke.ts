/**
 * `npx tsx deploy/local/smoke.ts [--write-marker X | --expect-marker X]`: checks the running local
 * stack with the same clients cpflow uses, through the settings `stack env` prints:
 *  - MariaDB: log in as the cpflow user over TCP, create a table in its own database
 *    cpflow_stack_smoke (so the application schema in `cpflow` stays untouched), write or read a marker row;
 *  - MinIO: create a bucket, put and read back an object;
 *  - Temporal: the default namespace answers and the Cpflow* search attributes are registered.
 * With --expect-marker it fails unless a marker written earlier survived (data kept across restarts).
 */
import { CreateBucketCommand, GetObjectCommand, HeadBucketCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { Connection } from '@temporalio/client';
import mariadb from 'mariadb';
import { dbConfig, s3Config } from '../../core/config';
import { smokeCheckDatabase } from '../../core/db/admin';
import { dbTlsOptions } from '../../core/db/pool';
import { createS3Client } from '../../core/s3';
import { temporalConnectionOptions, temporalSettings } from '../../core/temporal-settings';
import { stackEnv, TEMPORAL_NAMESPACE, TEMPORAL_SEARCH_ATTRIBUTES } from './services';

async function checkDatabase(env: Awaited<ReturnType<typeof stackEnv>>, writeMarker?: string, expectMarker?: string): Promise<string> {
  const connection = await mariadb.createConnection({
    host: env.CPFLOW_DB_HOST,
    port: Number(env.CPFLOW_DB_PORT),
    user: env.CPFLOW_DB_USER,
    password: env.CPFLOW_DB_PASSWORD,
    // The secure stack's TLS settings, read the way cpflow reads them.
    ssl: dbTlsOptions(dbConfig({ ...env })),
  });
  try {
    const { markers, charset } = await smokeCheckDatabase(connection, env.CPFLOW_DB_NAME, { write: writeMarker, expect: expectMarker });
    return `MariaDB ok: markers [${markers.join(', ')}], server charset ${charset}`;
  } finally {
    await connection.end();
  }
}

async function checkObjectStore(env: Awaited<ReturnType<typeof stackEnv>>, writeMarker?: string, expectMarker?: string): Promise<string> {
  const s3 = createS3Client(s3Config({ ...env }));
  const Bucket = 'stack-smoke';
  try {
    await s3.send(new HeadBucketCommand({ Bucket }));
  } catch {
    await s3.send(new CreateBucketCommand({ Bucket }));
  }
  if (writeMarker !== undefined) await s3.send(new PutObjectCommand({ Bucket, Key: `markers/${writeMarker}`, Body: writeMarker }));
  if (expectMarker !== undefined) {
    const object = await s3.send(new GetObjectCommand({ Bucket, Key: `markers/${expectMarker}` }));
    const body = await object.Body?.transformToString();
    if (body !== expectMarker) throw new Error(`MinIO object markers/${expectMarker} holds ${JSON.stringify(body)}`);
  }
  const probeKey = `probe-${Date.now()}`;
  await s3.send(new PutObjectCommand({ Bucket, Key: probeKey, Body: probeKey }));
  const readBack = await (await s3.send(new GetObjectCommand({ Bucket, Key: probeKey }))).Body?.transformToString();
  if (readBack !== probeKey) throw new Error(`MinIO returned ${JSON.stringify(readBack)} for ${probeKey}`);
  return 'MinIO ok: bucket stack-smoke, put/get round trip';
}

async function checkTemporal(env: Awaited<ReturnType<typeof stackEnv>>): Promise<string> {
  const connection = await Connection.connect({ ...temporalConnectionOptions(temporalSettings({ ...env })), connectTimeout: 5000 });
  try {
    const response = await connection.operatorService.listSearchAttributes({ namespace: TEMPORAL_NAMESPACE });
    const registered = Object.keys(response.customAttributes ?? {});
    const missing = Object.keys(TEMPORAL_SEARCH_ATTRIBUTES).filter((name) => !registered.includes(name));
    if (missing.length > 0) throw new Error(`Temporal lacks search attributes ${missing.join(', ')}`);
    return `Temporal ok: namespace ${TEMPORAL_NAMESPACE}, search attributes ${Object.keys(TEMPORAL_SEARCH_ATTRIBUTES).join(', ')}`;
  } finally {
    await connection.close();
  }
}

async function main(): Promise<void> {
  const argument = (flag: string) => {
    const index = process.argv.indexOf(flag);
    return index >= 0 ? process.argv[index + 1] : undefined;
  };
  const writeMarker = argument('--write-marker');
  const expectMarker = argument('--expect-marker');
  const env = await stackEnv();
  for (const line of await Promise.all([checkDatabase(env, writeMarker, expectMarker), checkObjectStore(env, writeMarker, expectMarker), checkTemporal(env)])) {
    process.stdout.write(`${line}\n`);
  }
}

if (require.main === module) {
  main().catch((error: unknown) => {
    process.stderr.write(`smoke check failed: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
