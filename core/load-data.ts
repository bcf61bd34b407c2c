/**
 * LoadData CSVs: the way production CellProfiler runs are fed (Distributed-CellProfiler, Cell
 * Painting recipes). One row is one image set:
 *
 * - `FileName_<Name>` with an optional `PathName_<Name>`: the image for channel `<Name>`, its folder
 *   relative to the uploaded `--folder` or the `--s3-prefix` (an absolute folder inside `--folder`
 *   is accepted and made relative);
 * - `URL_<Name>`: an `s3://` URL instead (used only where no `FileName_<Name>` is given);
 * - `ObjectsFileName_<Name>` / `ObjectsPathName_<Name>` / `ObjectsURL_<Name>`: a label image loaded
 *   as objects `<Name>` (channel `Objects:<Name>` inside cpflow);
 * - `Metadata_<Key>`: the set's metadata (usable by `--group-by`); the set's key joins the metadata
 *   values in column order (`row-000001`… when there is none).
 *
 * Each analysis activity later writes CellProfiler a CSV of just its own rows pointing at its local
 * copies (activities/engines/cellprofiler/load-data.ts). Pure: no I/O here.
 */
import path from 'node:path';
import { parseCsvText } from './csv';
import { safeKeySegment } from './model/stages';

export class LoadDataError extends Error {
  constructor(
    readonly source: string,
    problem: string,
  ) {
    super(`--load-data ${source}: ${problem}`);
    this.name = 'LoadDataError';
  }
}

export type LoadDataLocation = { kind: 'relative'; path: string } | { kind: 's3'; uri: string };

export interface LoadDataFile {
  /** `DNA`, or `Objects:Nuclei` for label images. */
  channel: string;
  location: LoadDataLocation;
}

export interface LoadDataSet {
  /** 1-based data row (the header is row 0). */
  row: number;
  key: string;
  metadata: Record<string, string>;
  files: LoadDataFile[];
}

export interface LoadDataTable {
  sets: LoadDataSet[];
  channels: string[];
  metadataKeys: string[];
}

export const OBJECTS_CHANNEL_PREFIX = 'Objects:';

const CHANNEL_NAME = /^[A-Za-z][A-Za-z0-9_]*$/;
const FILE_COLUMN = /^(Objects)?(FileName|PathName|URL)_(.+)$/;

export function parseLoadDataCsv(text: string, source: string, opts: { folderRoot?: string } = {}): LoadDataTable {
  let records: string[][];
  try {
    records = parseCsvText(text);
  } catch (err) {
    throw new LoadDataError(source, `not a readable CSV (${(err as Error).message})`);
  }
  const [header, ...rows] = records;
  if (!header || header.length === 0) throw new LoadDataError(source, 'is empty');
  if (rows.length === 0) throw new LoadDataError(source, 'has a header but no rows');

  const seen = new Set<string>();
  const metadataColumns: Array<{ index: number; key: string }> = [];
  const byChannel = new Map<string, { file?: number; path?: number; url?: number }>();
  header.forEach((raw, index) => {
    const column = raw.trim();
    if (seen.has(column)) throw new LoadDataError(source, `column ${column} appears twice`);
    seen.add(column);
    if (column.startsWith('Metadata_')) {
      const key = column.slice('Metadata_'.length);
      if (!CHANNEL_NAME.test(key)) throw new LoadDataError(source, `column ${column}: metadata names are letters, digits and _`);
      metadataColumns.push({ index, key });
      return;
    }
    const m = FILE_COLUMN.exec(column);
    if (!m) {
      throw new LoadDataError(
        source,
        `column ${column} is not supported (cpflow reads FileName_/PathName_/URL_<Name>, the same with Objects, and Metadata_<Key>; multi-plane columns such as Series_ and Frame_ are not supported)`,
      );
    }
    const [, objects, kind, name] = m;
    if (!name || !CHANNEL_NAME.test(name)) throw new LoadDataError(source, `column ${column}: ${name} is not a CellProfiler image name`);
    const channel = objects ? `${OBJECTS_CHANNEL_PREFIX}${name}` : name;
    const entry = byChannel.get(channel) ?? {};
    if (kind === 'FileName') entry.file = index;
    else if (kind === 'PathName') entry.path = index;
    else entry.url = index;
    byChannel.set(channel, entry);
  });
  if (byChannel.size === 0) {
    throw new LoadDataError(source, `has no FileName_<Name> or URL_<Name> column (columns: ${header.join(', ')})`);
  }
  for (const [channel, e] of byChannel) {
    if (e.file === undefined && e.url === undefined) {
      const prefix = channel.startsWith(OBJECTS_CHANNEL_PREFIX) ? 'Objects' : '';
      const name = channel.replace(OBJECTS_CHANNEL_PREFIX, '');
      throw new LoadDataError(source, `column ${prefix}PathName_${name} has no ${prefix}FileName_${name} (or ${prefix}URL_${name}) beside it`);
    }
  }

  const channels = [...byChannel.keys()];
  const folderRoot = opts.folderRoot ? path.resolve(opts.folderRoot) : undefined;
  const sets: LoadDataSet[] = [];
  const rowByKey = new Map<string, number>();
  const rowByFiles = new Map<string, number>();
  rows.forEach((record, i) => {
    const row = i + 1;
    const cell = (index: number | undefined): string => (index === undefined ? '' : (record[index] ?? '').trim());
    const metadata = Object.fromEntries(metadataColumns.map(({ index, key }) => [key, cell(index)]));
    const files: LoadDataFile[] = channels.map((channel) => {
      const e = byChannel.get(channel) ?? {};
      const fileName = cell(e.file);
      const column = `${channel.startsWith(OBJECTS_CHANNEL_PREFIX) ? 'Objects' : ''}FileName_${channel.replace(OBJECTS_CHANNEL_PREFIX, '')}`;
      if (fileName !== '') {
        if (fileName.includes('/') || fileName.includes('\\')) {
          throw new LoadDataError(source, `row ${row}: ${column} ${JSON.stringify(fileName)} is a path; put the folder in the PathName column`);
        }
        return { channel, location: { kind: 'relative', path: joinRelative(source, row, cell(e.path), fileName, folderRoot) } };
      }
      const url = cell(e.url);
      if (url !== '') {
        if (!/^s3:\/\/[^/]+\/.+/.test(url)) {
          throw new LoadDataError(source, `row ${row}: URL ${JSON.stringify(url)} is not an s3:// URL (other locations: FileName_/PathName_ relative to --folder or --s3-prefix)`);
        }
        return { channel, location: { kind: 's3', uri: url } };
      }
      throw new LoadDataError(source, `row ${row}: no file for ${channel} (${column} is empty)`);
    });
    const key = metadataColumns.length > 0 ? metadataColumns.map(({ key: k }) => safeKeySegment(metadata[k] ?? '')).join('-') : `row-${String(row).padStart(6, '0')}`;
    if (metadataColumns.length > 0 && metadataColumns.some(({ key: k }) => (metadata[k] ?? '') === '')) {
      throw new LoadDataError(source, `row ${row}: empty metadata ${metadataColumns.filter(({ key: k }) => !metadata[k]).map(({ key: k }) => `Metadata_${k}`).join(', ')}`);
    }
    const earlier = rowByKey.get(key);
    if (earlier !== undefined) {
      throw new LoadDataError(
        source,
        `rows ${earlier} and ${row} are the same image set (${metadataColumns.map(({ key: k }) => `${k}=${metadata[k]}`).join(', ')}): duplicated sets`,
      );
    }
    rowByKey.set(key, row);
    const fileSignature = files.map((f) => `${f.channel}=${f.location.kind === 's3' ? f.location.uri : f.location.path}`).join('\n');
    const sameFiles = rowByFiles.get(fileSignature);
    if (sameFiles !== undefined) throw new LoadDataError(source, `rows ${sameFiles} and ${row} list the same files: duplicated sets`);
    rowByFiles.set(fileSignature, row);
    sets.push({ row, key, metadata, files });
  });
  return { sets, channels, metadataKeys: metadataColumns.map((c) => c.key) };
}

/** `PathName` + `FileName` as a path relative to the uploaded folder (or S3 prefix), posix-style. */
function joinRelative(source: string, row: number, folder: string, fileName: string, folderRoot: string | undefined): string {
  let dir = folder.replace(/\\/g, '/');
  if (dir.startsWith('/')) {
    const relative = folderRoot ? path.relative(folderRoot, dir) : undefined;
    if (relative === undefined || relative.startsWith('..') || path.isAbsolute(relative)) {
      throw new LoadDataError(
        source,
        `row ${row}: PathName ${JSON.stringify(folder)} is absolute${folderRoot ? ` and not inside --folder ${folderRoot}` : ''}; give folders relative to --folder or --s3-prefix`,
      );
    }
    dir = relative.split(path.sep).join('/');
  }
  const joined = path.posix.normalize(path.posix.join(dir, fileName));
  if (joined.startsWith('../') || joined === '..') throw new LoadDataError(source, `row ${row}: ${joined} points outside the image folder`);
  return joined.replace(/^\.\//, '');
}
