import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import {
  CreateBucketCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  type GetObjectCommandOutput,
  ListBucketsCommand,
  ListObjectsV2Command,
  NoSuchKey,
  NotFound,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { ConfigError, s3Config, type S3Config } from './config';
import * as DEFAULTS from './model/defaults';

/** Object storage helpers. Everything is addressed as `s3://bucket/key` URIs in the database and payloads. */

let sharedClient: S3Client | undefined;

/**
 * The region: CPFLOW_S3_REGION, else whatever the AWS SDK's own chain finds (AWS_REGION, the shared
 * config's profile), else — for a custom endpoint such as MinIO, which ignores regions — us-east-1.
 */
async function resolveRegion(config: S3Config): Promise<string> {
  if (config.CPFLOW_S3_REGION) return config.CPFLOW_S3_REGION;
  try {
    return await new S3Client({}).config.region();
  } catch (err) {
    if (config.CPFLOW_S3_ENDPOINT) return DEFAULTS.S3_REGION;
    throw new ConfigError(`no S3 region: set CPFLOW_S3_REGION or AWS_REGION (${err instanceof Error ? err.message : String(err)})`);
  }
}

function readCa(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new ConfigError(`invalid configuration: CPFLOW_S3_TLS_CA=${JSON.stringify(file)}: ${(err as Error).message}`);
  }
}

export function createS3Client(config: S3Config = s3Config()): S3Client {
  return new S3Client({
    endpoint: config.CPFLOW_S3_ENDPOINT,
    region: () => resolveRegion(config),
    forcePathStyle: config.CPFLOW_S3_FORCE_PATH_STYLE,
    // Unset keys leave credentials to the SDK's chain: environment, profile, web identity, pod or instance role.
    credentials:
      config.CPFLOW_S3_ACCESS_KEY && config.CPFLOW_S3_SECRET_KEY
        ? { accessKeyId: config.CPFLOW_S3_ACCESS_KEY, secretAccessKey: config.CPFLOW_S3_SECRET_KEY }
        : undefined,
    // A private CA for an HTTPS endpoint (the secure local stack's MinIO); the system's CAs otherwise.
    requestHandler: config.CPFLOW_S3_TLS_CA ? { httpsAgent: new https.Agent({ ca: readCa(config.CPFLOW_S3_TLS_CA), keepAlive: true }) } : undefined,
    // The SDK's own retry (exponential backoff with jitter) covers 5xx and SlowDown; Temporal retries the rest.
    maxAttempts: 5,
  });
}

export function s3(): S3Client {
  sharedClient ??= createS3Client();
  return sharedClient;
}

export function s3Endpoint(): string {
  return s3Config().CPFLOW_S3_ENDPOINT ?? 'AWS S3';
}

export const s3Uri = (bucket: string, key: string): string => `s3://${bucket}/${key}`;

export function parseS3Uri(uri: string): { bucket: string; key: string } {
  const m = /^s3:\/\/([^/]+)\/(.*)$/.exec(uri);
  if (!m || !m[1]) throw new Error(`not an s3:// URI: ${uri}`);
  return { bucket: m[1], key: m[2] ?? '' };
}

/**
 * Create the bucket unless it exists. The existence check is a one-key listing rather than HEAD: a
 * HEAD response has no body, so a wrong key or a denied bucket would come back as "UnknownError"
 * instead of InvalidAccessKeyId, SignatureDoesNotMatch or AccessDenied.
 */
export async function ensureBucket(bucket: string, client = s3()): Promise<void> {
  try {
    await client.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1 }));
  } catch (err) {
    if (err instanceof S3ServiceException && (err.name === 'NoSuchBucket' || err.$metadata.httpStatusCode === 404)) {
      try {
        await client.send(new CreateBucketCommand({ Bucket: bucket }));
      } catch (createErr) {
        // Another process may have created it between our HEAD and CREATE.
        if (!(createErr instanceof S3ServiceException && /BucketAlready(OwnedByYou|Exists)/.test(createErr.name))) {
          throw createErr;
        }
      }
      return;
    }
    throw err;
  }
}

export interface StoredObject {
  uri: string;
  size: number;
  /** `sha256:<hex>` of the bytes written. */
  checksum: string;
}

export async function sha256File(path: string): Promise<string> {
  const hash = crypto.createHash('sha256');
  await pipeline(fs.createReadStream(path), hash);
  return hash.digest('hex');
}

/** Files up to this size are uploaded with one PutObject; larger ones in parts. Unit: bytes. */
const SINGLE_PUT_BYTES = 8 * 1024 * 1024;

/** Upload a local file (multipart for large ones) and return its URI, size and sha256. */
export async function putFile(
  bucket: string,
  key: string,
  localPath: string,
  opts: { contentType?: string; client?: S3Client } = {},
): Promise<StoredObject> {
  const stat = await fs.promises.stat(localPath);
  if (stat.size <= SINGLE_PUT_BYTES) {
    // Small files (tables, most outputs): one read, one PutObject. The multipart Upload helper and a
    // second read for the hash cost more CPU than the transfer itself at thousands of sets.
    const bytes = await fs.promises.readFile(localPath);
    return putBytes(bucket, key, bytes, opts.contentType, opts.client);
  }
  const digest = await sha256File(localPath);
  const upload = new Upload({
    client: opts.client ?? s3(),
    params: {
      Bucket: bucket,
      Key: key,
      Body: fs.createReadStream(localPath),
      ContentType: opts.contentType,
      Metadata: { sha256: digest },
    },
    queueSize: 4,
    partSize: 8 * 1024 * 1024,
  });
  await upload.done();
  return { uri: s3Uri(bucket, key), size: stat.size, checksum: `sha256:${digest}` };
}

export async function putBytes(
  bucket: string,
  key: string,
  body: string | Buffer,
  contentType?: string,
  client = s3(),
): Promise<StoredObject> {
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  const digest = crypto.createHash('sha256').update(bytes).digest('hex');
  await client.send(
    new PutObjectCommand({ Bucket: bucket, Key: key, Body: bytes, ContentType: contentType ?? 'application/octet-stream', Metadata: { sha256: digest } }),
  );
  return { uri: s3Uri(bucket, key), size: bytes.length, checksum: `sha256:${digest}` };
}

export async function getStream(bucket: string, key: string, client = s3()): Promise<Readable> {
  const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  if (!(res.Body instanceof Readable)) throw new Error(`s3://${bucket}/${key}: no body`);
  return res.Body;
}

export async function getBytes(bucket: string, key: string, client = s3()): Promise<Buffer> {
  const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  if (!res.Body) throw new Error(`s3://${bucket}/${key}: no body`);
  return Buffer.from(await res.Body.transformToByteArray());
}

/** `undefined` when the object does not exist; other errors propagate (and are retried by Temporal). */
export async function getBytesIfExists(bucket: string, key: string, client = s3()): Promise<Buffer | undefined> {
  try {
    return await getBytes(bucket, key, client);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

export async function downloadToFile(bucket: string, key: string, localPath: string, client = s3()): Promise<void> {
  const body = await getStream(bucket, key, client);
  await pipeline(body, fs.createWriteStream(localPath));
}

/**
 * Download an object to a file, hashing it on the way: one GET, no HEAD and no second read.
 * `undefined` when the object does not exist; other errors propagate (and are retried).
 */
export async function downloadIfExists(
  bucket: string,
  key: string,
  localPath: string,
  client = s3(),
): Promise<{ size: number; sha256: string; etag: string } | undefined> {
  let res: GetObjectCommandOutput;
  try {
    res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  if (!(res.Body instanceof Readable)) throw new Error(`s3://${bucket}/${key}: no body`);
  const body = res.Body;
  const etag = (res.ETag ?? '').replace(/"/g, '');
  const hash = crypto.createHash('sha256');
  let size = 0;
  body.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    size += chunk.length;
  });
  await pipeline(body, fs.createWriteStream(localPath));
  return { size, sha256: hash.digest('hex'), etag };
}

/** Delete every object under a prefix (a failed submit's uploads). Returns how many were deleted. */
export async function deletePrefix(bucket: string, prefix: string, client = s3()): Promise<number> {
  let deleted = 0;
  let page: string[] = [];
  const flush = async (): Promise<void> => {
    if (page.length === 0) return;
    await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: page.map((Key) => ({ Key })), Quiet: true } }));
    deleted += page.length;
    page = [];
  };
  for await (const o of listObjects(bucket, prefix, client)) {
    page.push(o.key);
    if (page.length === 1000) await flush();
  }
  await flush();
  return deleted;
}

/**
 * Whether S3 accepts these credentials, from one bucket listing: a credential failure is thrown (a
 * worker refuses to start with keys that can never work); AccessDenied (an account without
 * ListAllMyBuckets, like the local stack's) means the keys were accepted; anything else (an outage)
 * is returned as a note, because it proves nothing about the keys.
 */
export async function probeS3Credentials(client = s3()): Promise<string | undefined> {
  try {
    await client.send(new ListBucketsCommand({}));
    return undefined;
  } catch (err) {
    const code = (err as { Code?: string; name?: string }).Code ?? (err as Error).name;
    if (code === 'InvalidAccessKeyId' || code === 'SignatureDoesNotMatch') throw err;
    // Authorisation is checked after authentication: a denied listing proves the keys are valid.
    if (code === 'AccessDenied') return undefined;
    return err instanceof Error ? err.message : String(err);
  }
}

export async function* listObjects(
  bucket: string,
  prefix: string,
  client = s3(),
): AsyncGenerator<{ key: string; size: number; etag: string }> {
  let token: string | undefined;
  do {
    const res = await client.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of res.Contents ?? []) {
      if (o.Key) yield { key: o.Key, size: o.Size ?? 0, etag: (o.ETag ?? '').replace(/"/g, '') };
    }
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
  } while (token);
}

/** The first key under a prefix, or undefined when nothing is stored there (one listing of one key). */
export async function firstKeyUnder(bucket: string, prefix: string, client = s3()): Promise<string | undefined> {
  const res = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, MaxKeys: 1 }));
  return res.Contents?.[0]?.Key;
}

export function isNotFound(err: unknown): boolean {
  if (err instanceof NoSuchKey || err instanceof NotFound) return true;
  return err instanceof S3ServiceException && (err.$metadata.httpStatusCode === 404 || err.name === 'NoSuchKey');
}

/**
 * The object operations activities use, as one interface: the real one is S3 (`s3Store`); unit
 * tests of activity logic pass an in-memory one.
 */
export interface ObjectStore {
  getBytes(bucket: string, key: string): Promise<Buffer>;
  /** `undefined` when the object does not exist. */
  getBytesIfExists(bucket: string, key: string): Promise<Buffer | undefined>;
  /** Download to a file, hashing on the way; `undefined` when the object does not exist. `etag` as S3 reports it. */
  downloadIfExists(bucket: string, key: string, localPath: string): Promise<{ size: number; sha256: string; etag?: string } | undefined>;
  downloadToFile(bucket: string, key: string, localPath: string): Promise<void>;
  putFile(bucket: string, key: string, localPath: string, opts?: { contentType?: string }): Promise<StoredObject>;
  putBytes(bucket: string, key: string, body: string | Buffer, contentType?: string): Promise<StoredObject>;
}

export const s3Store: ObjectStore = {
  getBytes: (bucket, key) => getBytes(bucket, key),
  getBytesIfExists: (bucket, key) => getBytesIfExists(bucket, key),
  downloadIfExists: (bucket, key, localPath) => downloadIfExists(bucket, key, localPath),
  downloadToFile: (bucket, key, localPath) => downloadToFile(bucket, key, localPath),
  putFile: (bucket, key, localPath, opts) => putFile(bucket, key, localPath, opts),
  putBytes: (bucket, key, body, contentType) => putBytes(bucket, key, body, contentType),
};

/**
 * S3 key layout (DESIGN.md §3). Deterministic, so a retried attempt writes to the same place. A plain
 * experiment keeps `cpflow/<id>/sets/<key>/`; a stage of a staged experiment lives under
 * `cpflow/<id>/stages/<stage>/`, with the same `sets/` and `groups/<group key>/` inside.
 */
const stageRoot = (experimentId: number, stage = ''): string =>
  stage === '' ? `cpflow/${experimentId}/` : `cpflow/${experimentId}/stages/${stage}/`;

export const layout = {
  pipeline: (sha256: string) => `pipelines/${sha256}.cppipe`,
  /** Uploaded inputs of one experiment: a prefix no other experiment shares (appends get sub-folders). */
  experimentInputs: (experimentId: number) => `inputs/${experimentId}/`,
  experimentRoot: (experimentId: number) => `cpflow/${experimentId}/`,
  stageRoot,
  setPrefix: (experimentId: number, setKey: string, stage = '') => `${stageRoot(experimentId, stage)}sets/${setKey}/`,
  /** Outputs of a whole group (e.g. its illumination function) and the group's provenance.json. */
  groupPrefix: (experimentId: number, groupKey: string, stage = '') => `${stageRoot(experimentId, stage)}groups/${groupKey}/`,
  /**
   * A chunk manifest, named by its first set id and a digest of its content: a retry writes the same
   * object again, while a later run over other sets (or changed inputs) gets a new key, so a worker's
   * manifest cache can never serve an older manifest under the same name.
   */
  manifestChunk: (experimentId: number, chunk: number, digest: string) =>
    `cpflow/${experimentId}/manifest/chunk-${String(chunk).padStart(6, '0')}-${digest.slice(0, 16)}.json`,
  results: (experimentId: number, name: string) => `cpflow/${experimentId}/results/${name}`,
};
