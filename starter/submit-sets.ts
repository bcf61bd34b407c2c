import fs from 'node:fs';
import path from 'node:path';
import { checkChannelMapKeys, groupFiles, metadataKeysOf } from '../core/grouping';
import { parseLoadDataCsv } from '../core/load-data';
import type { GroupingRule } from '../core/model';
import { firstFew } from './local-files';
import { SubmitError } from './submit-error';
import { resolveLoadDataFiles, type Source, type SourceSet } from './submit-sources';

/** Files → image sets for `cpflow submit`: by the grouping rule, or one per row of a LoadData CSV. */

/** What of the submit's options the image sets depend on. */
export interface SetsOptions {
  grouping?: GroupingRule;
  userChannelMap?: Record<string, string>;
  skipIncomplete?: boolean;
  folder?: string;
}

export interface ExperimentSets {
  sets: SourceSet[];
  unmatched: string[];
  incomplete: Array<{ key: string; missing: string[] }>;
  channels: string[];
  metadataKeys: string[];
  groupingRule: GroupingRule;
}

/** Image sets from file names and the grouping rule, in the files' own order (as CellProfiler orders a folder). */
export function ruleSets(sources: Source[], required: string[], opts: SetsOptions, where: string | undefined): ExperimentSets {
  const rule = opts.grouping as GroupingRule;
  const result = groupFiles(sources, (s) => s.name, rule, required.length > 0 ? required : undefined, { skipIncomplete: opts.skipIncomplete });
  checkChannelMapKeys(opts.userChannelMap ?? {}, result);
  if (result.sets.length === 0) {
    throw new SubmitError(
      result.incomplete.length > 0
        ? `no complete image set in ${where}: ${firstFew(result.incomplete.map((i) => `${i.key} lacks ${i.missing.join(', ')}`))}`
        : `the grouping rule matched none of the ${sources.length} files in ${where} (first: ${sources[0]?.name})`,
    );
  }
  // Registration order is the order a group's sets reach CellProfiler: the files' own order, not the keys'.
  const location = (s: (typeof result.sets)[number]): string => s.files.map((f) => f.file.name).join('\n');
  const sets = [...result.sets]
    .sort((a, b) => (location(a) < location(b) ? -1 : location(a) > location(b) ? 1 : 0))
    .map((s) => ({ key: s.key, metadata: s.metadata, files: s.files.map((f) => ({ channel: f.channel, source: f.file })) }));
  return { sets, unmatched: result.unmatched, incomplete: result.incomplete, channels: result.channels, metadataKeys: metadataKeysOf(rule), groupingRule: rule };
}

/** Image sets from a LoadData CSV: one per row, files by relative path or s3:// URL. */
export async function loadDataSets(csv: string, sources: Source[], required: string[], opts: SetsOptions, where: string): Promise<ExperimentSets> {
  const table = parseLoadDataCsv(fs.readFileSync(csv, 'utf8'), csv, { folderRoot: opts.folder });
  const missing = required.filter((c) => !table.channels.includes(c));
  if (missing.length > 0) {
    throw new SubmitError(`--load-data ${csv}: no column FileName_${missing[0]} for channel ${missing.join(', ')} the pipeline needs (channels in the CSV: ${table.channels.join(', ')})`);
  }
  return {
    sets: await resolveLoadDataFiles(table.sets, sources, csv, where),
    unmatched: [],
    incomplete: [],
    channels: table.channels,
    metadataKeys: table.metadataKeys,
    groupingRule: { pattern: `loaddata:${path.basename(csv)}`, channelGroup: 'Channel', channelMap: {}, preset: 'loaddata' },
  };
}
