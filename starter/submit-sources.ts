import type { parseLoadDataCsv } from '../core/load-data';
import { listObjects, parseS3Uri, s3Uri } from '../core/s3';
import { firstFew, listLocalFolder } from './local-files';
import { SubmitError } from './submit-error';

/**
 * Where `cpflow submit` finds the files of an experiment: a local folder (listed with its hidden and
 * refused entries) or an S3 prefix, and, for LoadData CSVs, each row's files by relative path or
 * s3:// URL.
 */

export type Source = { name: string; local?: string; size: number; s3?: { bucket: string; key: string; etag: string } };

/** An image set as submit sees it before upload: its files are still sources. */
export interface SourceSet {
  key: string;
  metadata: Record<string, string>;
  files: Array<{ channel: string; source: Source }>;
}

export interface Listing {
  sources: Source[];
  /** Hidden files and folders of --folder that were left out (.DS_Store, ._* AppleDouble files…). */
  hidden: string[];
}

export async function listSources(where: { folder?: string; s3?: { bucket: string; key: string } }): Promise<Listing> {
  if (where.folder !== undefined) {
    const listing = listLocalFolder(where.folder);
    if (listing.refused.length > 0) {
      throw new SubmitError(
        `--folder ${where.folder}: ${listing.refused.length} ${listing.refused.length === 1 ? 'entry is' : 'entries are'} not files cpflow can upload: ` +
          firstFew(listing.refused.map((r) => `${r.name} ${r.reason}`)),
      );
    }
    return { sources: listing.files.map((f) => ({ name: f.name, local: f.local, size: f.size })), hidden: listing.hidden };
  }
  const sources: Source[] = [];
  if (where.s3) {
    const { bucket, key: prefix } = where.s3;
    for await (const o of listObjects(bucket, prefix)) sources.push({ name: o.key.slice(prefix.length), size: o.size, s3: { bucket, key: o.key, etag: o.etag } });
  }
  return { sources, hidden: [] };
}

/** Every LoadData row's files, found in the uploaded folder (or S3 prefix) or at their s3:// URL. */
export async function resolveLoadDataFiles(
  rows: ReturnType<typeof parseLoadDataCsv>['sets'],
  sources: Source[],
  csv: string,
  where: string,
): Promise<SourceSet[]> {
  const byName = new Map(sources.map((s) => [s.name, s]));
  // s3:// URLs: one listing per folder, not one request per file.
  const urlDirs = new Map<string, Map<string, Source>>();
  for (const row of rows) {
    for (const f of row.files) {
      if (f.location.kind !== 's3') continue;
      const { bucket, key } = parseS3Uri(f.location.uri);
      const prefix = key.slice(0, key.lastIndexOf('/') + 1);
      const dir = `${bucket}/${prefix}`;
      if (urlDirs.has(dir)) continue;
      const listed = new Map<string, Source>();
      for await (const o of listObjects(bucket, prefix)) listed.set(s3Uri(bucket, o.key), { name: o.key, size: o.size, s3: { bucket, key: o.key, etag: o.etag } });
      urlDirs.set(dir, listed);
    }
  }
  return rows.map((row) => ({
    key: row.key,
    metadata: row.metadata,
    files: row.files.map((f) => {
      if (f.location.kind === 'relative') {
        const source = byName.get(f.location.path);
        if (!source) throw new SubmitError(`--load-data ${csv}: row ${row.row}: ${f.location.path} (${f.channel}) is not in ${where}`);
        return { channel: f.channel, source };
      }
      const { bucket, key } = parseS3Uri(f.location.uri);
      const source = urlDirs.get(`${bucket}/${key.slice(0, key.lastIndexOf('/') + 1)}`)?.get(f.location.uri);
      if (!source) throw new SubmitError(`--load-data ${csv}: row ${row.row}: ${f.location.uri} (${f.channel}) does not exist`);
      return { channel: f.channel, source };
    }),
  }));
}
