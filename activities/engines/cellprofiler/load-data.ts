/**
 * The LoadData CSV one CellProfiler invocation reads (`--data-file`): one row per image set of the
 * invocation, in the order given, each pointing at that set's own folder of local copies, so the
 * PathName_ columns of CellProfiler's Image table map rows back to sets exactly as with file lists.
 */
import fs from 'node:fs';
import path from 'node:path';
import { stringify } from 'csv-stringify/sync';
import { OBJECTS_CHANNEL_PREFIX } from '../../../core/load-data';
import type { EngineImageSet } from '../types';

/** Column names for a channel: `FileName_DNA`/`PathName_DNA`, or `ObjectsFileName_X`/`ObjectsPathName_X` for objects. */
function columnsOf(channel: string): { file: string; path: string } {
  if (channel.startsWith(OBJECTS_CHANNEL_PREFIX)) {
    const name = channel.slice(OBJECTS_CHANNEL_PREFIX.length);
    return { file: `ObjectsFileName_${name}`, path: `ObjectsPathName_${name}` };
  }
  return { file: `FileName_${channel}`, path: `PathName_${channel}` };
}

/**
 * Writes the CSV. `linked[i]` maps set i's channels to their local link (inside the set's folder).
 * Every set must have the same channels (a LoadData table has one column per channel).
 */
export async function writeLoadDataCsv(target: string, sets: EngineImageSet[], linked: Array<Map<string, string>>): Promise<void> {
  const channels = [...new Set(sets.flatMap((s) => s.files.map((f) => f.channel)))].sort();
  const metadataKeys = [...new Set(sets.flatMap((s) => Object.keys(s.metadata)))];
  const header = [...metadataKeys.map((k) => `Metadata_${k}`), ...channels.flatMap((c) => [columnsOf(c).file, columnsOf(c).path])];
  const rows = sets.map((set, i) => {
    const links = linked[i] ?? new Map<string, string>();
    return [
      ...metadataKeys.map((k) => set.metadata[k] ?? ''),
      ...channels.flatMap((c) => {
        const link = links.get(c);
        if (!link) throw new Error(`image set ${set.key} has no file for channel ${c}, which other sets of the run have`);
        return [path.basename(link), path.dirname(link)];
      }),
    ];
  });
  await fs.promises.writeFile(target, stringify([header, ...rows]));
}
