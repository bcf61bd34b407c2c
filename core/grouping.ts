import path from 'node:path';
import { groupingRuleSchema, type GroupingRule } from './model/domain';

/**
 * Grouping rules map file names to image sets and channels with one regular expression whose named
 * groups are the metadata (Plate, Well, Site, …) and the channel. Presets cover common layouts.
 */

export const GROUPING_PRESETS: Record<string, { rule: GroupingRule; description: string; example: string }> = {
  // ImageXpress-style names as in CellProfiler's ExampleHuman: <plate>_<well>f<site>d<channel#>.tif
  examplehuman: {
    description: 'ImageXpress-style <Plate>_<Well>f<Site>d<n>.tif with d0=DNA, d1=PH3, d2=cellbody',
    example: 'AS_09125_050116030001_D03f00d0.tif',
    rule: {
      pattern: '^(?<Plate>.+)_(?<Well>[A-P][0-9]{2})f(?<Site>[0-9]{2})d(?<Channel>[0-9])\\.tiff?$',
      channelGroup: 'Channel',
      channelMap: { '0': 'DNA', '1': 'PH3', '2': 'cellbody' },
      keyTemplate: '{Plate}-{Well}-f{Site}',
      preset: 'examplehuman',
    },
  },
  // The synthetic plates cpflow generates for its demo, tests and benchmark.
  synthetic: {
    description: '<Plate>_<Well>_s<Site>_w<Channel>.(tif|png), channel named in the file',
    example: 'P1_A01_s1_wDNA.tif',
    rule: {
      pattern: '^(?<Plate>[^_]+)_(?<Well>[A-P][0-9]{2})_s(?<Site>[0-9]+)_w(?<Channel>[A-Za-z0-9]+)\\.(tiff?|png)$',
      channelGroup: 'Channel',
      channelMap: {},
      keyTemplate: '{Plate}-{Well}-s{Site}',
      preset: 'synthetic',
    },
  },
  // Opera Phenix / Harmony exports: r01c01f01p01-ch1sk1fk1fl1.tiff
  phenix: {
    description: 'Opera Phenix r<row>c<col>f<field>p<plane>-ch<n>….tiff',
    example: 'r03c04f01p01-ch1sk1fk1fl1.tiff',
    rule: {
      pattern: '^r(?<Row>[0-9]{2})c(?<Column>[0-9]{2})f(?<Site>[0-9]{2})p(?<Plane>[0-9]{2})-ch(?<Channel>[0-9]+)sk.*\\.tiff?$',
      channelGroup: 'Channel',
      channelMap: {},
      keyTemplate: 'r{Row}c{Column}-f{Site}-p{Plane}',
      preset: 'phenix',
    },
  },
};

/**
 * CellProfiler's Metadata module (Python) writes named groups as `(?P<Plate>…)` and back-references
 * as `(?P=Plate)`; JavaScript spells them `(?<Plate>…)` and `\k<Plate>`. Rules may use either.
 */
export function toJavaScriptPattern(pattern: string): string {
  return pattern.replace(/\(\?P<([A-Za-z_][A-Za-z0-9_]*)>/g, '(?<$1>').replace(/\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)/g, '\\k<$1>');
}

/** A rule's metadata keys: the expression's named groups, minus the channel group. */
export function metadataKeysOf(rule: Pick<GroupingRule, 'pattern' | 'channelGroup'>): string[] {
  return [...toJavaScriptPattern(rule.pattern).matchAll(/\(\?<([A-Za-z][A-Za-z0-9_]*)>/g)]
    .map((m) => m[1] ?? '')
    .filter((n) => n !== '' && n !== rule.channelGroup);
}

export class GroupingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GroupingError';
  }
}

/** Accepts a preset name, or a JSON rule, or a bare regular expression with a `Channel` group. */
export function resolveGroupingRule(spec: string, channelMap: Record<string, string> = {}): GroupingRule {
  const preset = GROUPING_PRESETS[spec];
  if (preset) return { ...preset.rule, channelMap: { ...preset.rule.channelMap, ...channelMap } };
  let candidate: unknown;
  if (spec.trim().startsWith('{')) {
    try {
      candidate = JSON.parse(spec);
    } catch (err) {
      throw new GroupingError(`--grouping: not valid JSON (${(err as Error).message})`);
    }
  } else {
    candidate = { pattern: spec, channelMap };
  }
  if (candidate && typeof candidate === 'object' && 'pattern' in candidate && typeof candidate.pattern === 'string') {
    candidate = { ...candidate, pattern: toJavaScriptPattern(candidate.pattern) };
  }
  const parsed = groupingRuleSchema.safeParse(candidate);
  if (!parsed.success) {
    throw new GroupingError(`--grouping: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  compile(parsed.data); // validates the expression
  return parsed.data;
}

function compile(rule: GroupingRule): RegExp {
  let re: RegExp;
  const pattern = toJavaScriptPattern(rule.pattern);
  try {
    re = new RegExp(pattern);
  } catch (err) {
    throw new GroupingError(`--grouping: invalid regular expression ${rule.pattern}: ${(err as Error).message}`);
  }
  if (!pattern.includes(`(?<${rule.channelGroup}>`)) {
    throw new GroupingError(`--grouping: the expression has no named group (?<${rule.channelGroup}>…) for the channel`);
  }
  return re;
}

export interface GroupedFile<F> {
  channel: string;
  file: F;
}

export interface GroupedSet<F> {
  key: string;
  metadata: Record<string, string>;
  files: Array<GroupedFile<F>>;
}

export interface GroupingResult<F> {
  sets: Array<GroupedSet<F>>;
  unmatched: string[];
  channels: string[];
  /** Sets left out for lacking channels (only with `skipIncomplete`; otherwise such sets are an error). */
  incomplete: Array<{ key: string; missing: string[] }>;
  /** Channel values as the file names have them, before the channel map renames them. */
  rawChannels: string[];
}

/**
 * `--channel-map` keys must be raw channel values some file has: a key that matches nothing is a
 * typo (or a preset's other spelling) that would otherwise be ignored without a word.
 */
export function checkChannelMapKeys(userMap: Record<string, string>, grouped: Pick<GroupingResult<unknown>, 'rawChannels'>): void {
  const unknown = Object.keys(userMap).filter((k) => !grouped.rawChannels.includes(k));
  if (unknown.length > 0) {
    throw new GroupingError(
      `--channel-map: no file has the raw channel ${unknown.map((k) => JSON.stringify(k)).join(', ')} (raw channels in the file names: ${grouped.rawChannels.join(', ') || 'none'})`,
    );
  }
}

function renderKey(rule: GroupingRule, groups: Record<string, string>): string {
  const metaNames = Object.keys(groups).filter((g) => g !== rule.channelGroup);
  const key = rule.keyTemplate
    ? rule.keyTemplate.replace(/\{([A-Za-z0-9_]+)\}/g, (_, name: string) => {
        const value = groups[name];
        if (value === undefined) throw new GroupingError(`--grouping: keyTemplate names {${name}}, which the expression does not capture`);
        return value;
      })
    : metaNames.map((n) => groups[n]).join('-');
  // Keys become S3 path segments: keep them to a safe alphabet.
  return key.replace(/[^A-Za-z0-9._-]+/g, '_');
}

/**
 * Group files into image sets. `name(file)` gives the path whose base name is matched. Every set must
 * have every channel in `requiredChannels` (the pipeline's NamesAndTypes), or all channels seen; with
 * `skipIncomplete` the sets that do not are left out and listed instead (`submit --skip-incomplete`).
 */
export function groupFiles<F>(
  files: F[],
  name: (file: F) => string,
  rule: GroupingRule,
  requiredChannels?: string[],
  options: { skipIncomplete?: boolean } = {},
): GroupingResult<F> {
  const re = compile(rule);
  const sets = new Map<string, GroupedSet<F>>();
  const unmatched: string[] = [];
  const channels = new Set<string>();
  const rawChannels = new Set<string>();
  for (const file of files) {
    const base = path.posix.basename(name(file));
    const m = re.exec(base);
    if (!m?.groups) {
      unmatched.push(name(file));
      continue;
    }
    const groups = Object.fromEntries(
      Object.entries(m.groups).filter((e): e is [string, string] => e[1] !== undefined),
    );
    const raw = groups[rule.channelGroup];
    if (raw === undefined) {
      unmatched.push(name(file));
      continue;
    }
    const channel = rule.channelMap[raw] ?? raw;
    channels.add(channel);
    rawChannels.add(raw);
    const key = renderKey(rule, groups);
    const metadata = Object.fromEntries(Object.entries(groups).filter(([k]) => k !== rule.channelGroup));
    const set = sets.get(key) ?? { key, metadata, files: [] };
    const clash = set.files.find((f) => f.channel === channel);
    if (clash) {
      throw new GroupingError(
        `image set ${key}: two files for channel ${channel}: ${name(clash.file)} and ${name(file)}`,
      );
    }
    set.files.push({ channel, file });
    sets.set(key, set);
  }
  const needed = requiredChannels && requiredChannels.length > 0 ? requiredChannels : [...channels];
  const incomplete: GroupingResult<F>['incomplete'] = [];
  for (const set of sets.values()) {
    const have = new Set(set.files.map((f) => f.channel));
    const missing = needed.filter((c) => !have.has(c));
    if (missing.length > 0) incomplete.push({ key: set.key, missing });
  }
  incomplete.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  if (incomplete.length > 0 && !options.skipIncomplete) {
    const problems = incomplete.map((i) => `image set ${i.key} lacks channel ${i.missing.join(', ')}`);
    const more = problems.length > 5 ? ` (and ${problems.length - 5} more)` : '';
    const found = [...channels].sort().join(', ') || 'none';
    const mapped = Object.keys(rule.channelMap).length > 0 ? ` after --channel-map ${Object.entries(rule.channelMap).map(([k, v]) => `${k}=${v}`).join(',')}` : '';
    throw new GroupingError(
      `${problems.slice(0, 5).join('; ')}${more} (channels found in the file names${mapped}: ${found}; needed: ${needed.join(', ')}); --skip-incomplete registers the complete sets only`,
    );
  }
  for (const i of incomplete) sets.delete(i.key);
  const sorted = [...sets.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  for (const s of sorted) s.files.sort((a, b) => (a.channel < b.channel ? -1 : 1));
  return { sets: sorted, unmatched, channels: [...channels].sort(), rawChannels: [...rawChannels].sort(), incomplete };
}
