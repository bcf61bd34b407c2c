import crypto from 'node:crypto';
import fs from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import {
  CreateBucketCommand,
  GetObjectCommand,
  HeadBucketCommand,
  ListObjectsV2Command,
  NoSuchKey,
  NotFound,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { s3Config, type S3Config } from './config';

// Node 20 is this project's floor (it is what the lab machines run); the SDK's notice about its future
// Node 22 requirement would otherwise print on every command.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Object storage helpers. Everything is addressed as `s3://bucket/key` URIs in the database and payloads. */

let sharedClient: S3Client | undefined;

export function createS3Client(config: S3Config = s3Config()): S3Client {
  return new S3Client({
    endpoint: config.CPFLOW_S3_ENDPOINT,
    region: config.CPFLOW_S3_REGION,
    forcePathStyle: config.CPFLOW_S3_FORCE_PATH_STYLE,
    credentials:
      config.CPFLOW_S3_ACCESS_KEY && config.CPFLOW_S3_SECRET_KEY
        ? { accessKeyId: config.CPFLOW_S3_ACCESS_KEY, secretAccessKey: config.CPFLOW_S3_SECRET_KEY }
        : undefined,
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

export async function ensureBucket(bucket: string, client = s3()): Promise<void> {
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }));
  } catch (err) {
    if (err instanceof S3ServiceException && (err.$metadata.httpStatusCode === 404 || err.name === 'NotFound')) {
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
): Promise<{ size: number; sha256: string } | undefined> {
  let body: Readable;
  try {
    body = await getStream(bucket, key, client);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  const hash = crypto.createHash('sha256');
  let size = 0;
  body.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    size += chunk.length;
  });
  await pipeline(body, fs.createWriteStream(localPath));
  return { size, sha256: hash.digest('hex') };
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
  /** Download to a file, hashing on the way; `undefined` when the object does not exist. */
  downloadIfExists(bucket: string, key: string, localPath: string): Promise<{ size: number; sha256: string } | undefined>;
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

/** S3 key layout (DESIGN.md §3). Deterministic, so a retried attempt writes to the same place. */
export const layout = {
  pipeline: (sha256: string) => `pipelines/${sha256}.cppipe`,
  experimentRoot: (experimentId: number) => `cpflow/${experimentId}/`,
  setPrefix: (experimentId: number, setKey: string) => `cpflow/${experimentId}/sets/${setKey}/`,
  manifestChunk: (experimentId: number, chunk: number) =>
    `cpflow/${experimentId}/manifest/chunk-${String(chunk).padStart(6, '0')}.json`,
  results: (experimentId: number, name: string) => `cpflow/${experimentId}/results/${name}`,
};
