/**
 * Parser for CellProfiler's text pipeline format (`.cppipe`) and the checks cpflow needs before it
 * accepts a pipeline: which channels (NamesAndTypes names) it expects, which objects it creates, and
 * that it exports its measurements with ExportToSpreadsheet (cpflow's per-set outputs are those CSVs).
 *
 * The format, as CellProfiler 4/5 write it:
 *
 *   CellProfiler Pipeline: http://www.cellprofiler.org
 *   Version:5
 *   DateRevision:400
 *   GitHash:
 *   ModuleCount:14
 *   HasImagePlaneDetails:False
 *   <blank line>
 *   Images:[module_num:1|svn_version:'Unknown'|variable_revision_number:2|...|enabled:True|wants_pause:False]
 *       Setting text:value
 *       ...
 *   <blank line>
 *   NextModule:[...]
 *
 * Like CellProfiler's own loader (cellprofiler_core.pipeline.Pipeline.setup_modules), a setting line
 * is split at its first colon: the setting text never holds a colon, the value may. Settings are kept
 * as an ordered list because texts repeat (NamesAndTypes has one "Name to assign these images" per
 * rule) and their meaning depends on position.
 *
 * Everything here is pure (no I/O) so the same code validates a pipeline in the CLI, in an activity
 * and in unit tests.
 */
import { createHash } from 'node:crypto';

export const CPPIPE_HEADER = 'CellProfiler Pipeline: http://www.cellprofiler.org';

/**
 * Newest pipeline format cpflow accepts. CellProfiler 5 reads `Version` ≤ 5 (its NATIVE_VERSION is the
 * major version) and compares `DateRevision` with its own version written as major·100+minor·10+micro
 * (5.0.0 → 500): a higher revision comes from a newer CellProfiler than the pinned 5.0.0.dev build and
 * may use module revisions it cannot load. Old pipelines (CellProfiler 2.x/3.x) stored a timestamp
 * such as 20120424205644 in DateRevision; CellProfiler still loads those, so we accept them too.
 */
export const SUPPORTED_PIPELINE_VERSION = 5;
export const SUPPORTED_DATE_REVISION = 500;
const TIMESTAMP_REVISION_MIN = 20080101000000;
const TIMESTAMP_REVISION_MAX = 30080101000000;

export interface PipelineSetting {
  /** The setting's label as saved, e.g. `Name to assign these images`. May be empty. */
  text: string;
  /** Raw value after the first colon, unescaped only as far as the file itself is (no decoding). */
  value: string;
}

export interface PipelineModule {
  /** Module class name, e.g. `IdentifyPrimaryObjects`. */
  name: string;
  /** 1-based position as saved in `module_num`. */
  moduleNum: number;
  /** `enabled:False` modules are skipped by CellProfiler at run time. */
  enabled: boolean;
  /** Header attributes as raw strings (`variable_revision_number` → `14`, `notes` → `[...]`). */
  attributes: Record<string, string>;
  settings: PipelineSetting[];
  /** 1-based line number of the module header, for error messages. */
  line: number;
}

export interface Pipeline {
  /** Where the text came from (file name or URI), used in error messages. */
  source: string;
  version: number;
  dateRevision: number;
  gitHash: string;
  /** `ModuleCount` as declared in the header. */
  moduleCount: number;
  hasImagePlaneDetails: boolean;
  /** Every header line as key → raw value, including unknown keys (e.g. MessageForUser). */
  headers: Record<string, string>;
  modules: PipelineModule[];
}

/** The one error type for a pipeline cpflow cannot use; the message names the file and the problem. */
export class PipelineError extends Error {
  constructor(
    readonly source: string,
    readonly problem: string,
  ) {
    super(`${source}: ${problem}`);
    this.name = 'PipelineError';
  }
}

/** sha256 (hex) of the pipeline text as UTF-8: the content address used for `pipelines/<sha256>.cppipe`. */
export function pipelineSha256(text: string | Uint8Array): string {
  return createHash('sha256').update(text).digest('hex');
}

/** Parses a `.cppipe` text. Throws PipelineError for anything that is not a readable pipeline. */
export function parseCppipe(text: string, source = 'pipeline'): Pipeline {
  // A .cpproj project is HDF5 (starts with \x89HDF), a PNG with \x89PNG: both fail the header test
  // below, but saying what the file looks like saves the user a guess.
  const withoutBom = text.startsWith('\uFEFF') ? text.slice(1) : text;
  const lines = withoutBom.split(/\r\n|\n|\r/);
  const firstLine = (lines[0] ?? '').trim();
  if (firstLine !== CPPIPE_HEADER) {
    throw new PipelineError(source, `not a CellProfiler text pipeline (${describeNonPipeline(withoutBom)})`);
  }

  let index = 1;
  const headers: Record<string, string> = {};
  for (; index < lines.length; index++) {
    const line = lines[index];
    if (line.trim() === '') break;
    const colon = line.indexOf(':');
    if (colon < 0) {
      throw new PipelineError(source, `line ${index + 1}: header line without "key:value": ${JSON.stringify(line)}`);
    }
    headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  }

  const version = headerInteger(headers, 'Version', source, true);
  if (version > SUPPORTED_PIPELINE_VERSION) {
    throw new PipelineError(
      source,
      `pipeline format Version ${version} is newer than supported (CellProfiler 5 reads Version ≤ ${SUPPORTED_PIPELINE_VERSION}); save it from CellProfiler 5`,
    );
  }
  const dateRevision = headerInteger(headers, 'DateRevision', source, false) ?? 0;
  const isTimestampRevision = dateRevision > TIMESTAMP_REVISION_MIN && dateRevision < TIMESTAMP_REVISION_MAX;
  if (!isTimestampRevision && dateRevision > SUPPORTED_DATE_REVISION) {
    throw new PipelineError(
      source,
      `pipeline DateRevision ${dateRevision} comes from a CellProfiler newer than supported (DateRevision ≤ ${SUPPORTED_DATE_REVISION}, i.e. CellProfiler ≤ 5.0)`,
    );
  }
  const moduleCount = headerInteger(headers, 'ModuleCount', source, true);

  const modules: PipelineModule[] = [];
  let current: PipelineModule | undefined;
  for (index += 1; index < lines.length; index++) {
    const line = lines[index];
    if (line.trim() === '') {
      current = undefined;
      continue;
    }
    const isIndented = /^\s/.test(line);
    if (current && isIndented) {
      const colon = line.indexOf(':');
      if (colon < 0) {
        throw new PipelineError(source, `line ${index + 1}: setting without "text:value" in module ${current.name}`);
      }
      current.settings.push({ text: line.slice(0, colon).trim(), value: line.slice(colon + 1) });
      continue;
    }
    if (modules.length >= moduleCount && !current) {
      // After the declared modules CellProfiler may append the saved file list (HasImagePlaneDetails);
      // those lines are URLs, not modules.
      if (!looksLikeModuleHeader(line)) break;
    }
    const module = parseModuleHeader(line, index + 1, source);
    modules.push(module);
    current = module;
  }

  if (modules.length !== moduleCount) {
    throw new PipelineError(
      source,
      `header says ModuleCount:${moduleCount} but ${modules.length} module${modules.length === 1 ? '' : 's'} found (truncated or edited by hand?)`,
    );
  }

  return {
    source,
    version,
    dateRevision,
    gitHash: headers.GitHash ?? '',
    moduleCount,
    hasImagePlaneDetails: headers.HasImagePlaneDetails === 'True',
    headers,
    modules,
  };
}

function describeNonPipeline(text: string): string {
  if (text.length === 0) return 'the file is empty';
  if (text.startsWith('\u0089HDF') || text.startsWith('\uFFFDHDF')) {
    return 'it is an HDF5 file, probably a .cpproj project: export the pipeline from CellProfiler with File > Export > Pipeline';
  }
  if (text.startsWith('\u0089PNG') || text.startsWith('\uFFFDPNG')) return 'it is a PNG image';
  if (text.startsWith('II*\u0000') || text.startsWith('MM\u0000*')) return 'it is a TIFF image';
  if (/^\s*[[{]/.test(text)) return 'it looks like JSON; cpflow reads the text .cppipe format';
  const first = text.split(/\r\n|\n|\r/, 1)[0] ?? '';
  return `first line is ${JSON.stringify(first.slice(0, 80))}, expected ${JSON.stringify(CPPIPE_HEADER)}`;
}

function headerInteger(headers: Record<string, string>, key: string, source: string, required: true): number;
function headerInteger(
  headers: Record<string, string>,
  key: string,
  source: string,
  required: false,
): number | undefined;
function headerInteger(
  headers: Record<string, string>,
  key: string,
  source: string,
  required: boolean,
): number | undefined {
  const raw = headers[key];
  if (raw === undefined || raw === '') {
    if (required) throw new PipelineError(source, `header "${key}:" is missing`);
    return undefined;
  }
  if (!/^\d+$/.test(raw)) throw new PipelineError(source, `header "${key}:${raw}" is not a whole number`);
  return Number(raw);
}

const MODULE_HEADER = /^([A-Za-z_][A-Za-z0-9_]*):\[(.*)\]\s*$/;

function looksLikeModuleHeader(line: string): boolean {
  return MODULE_HEADER.test(line);
}

function parseModuleHeader(line: string, lineNumber: number, source: string): PipelineModule {
  const match = MODULE_HEADER.exec(line);
  if (!match) {
    throw new PipelineError(source, `line ${lineNumber}: expected a module header "Name:[module_num:N|...]", found ${JSON.stringify(line.slice(0, 80))}`);
  }
  const attributes: Record<string, string> = {};
  for (const part of splitAttributes(match[2])) {
    const colon = part.indexOf(':');
    if (colon < 0) continue;
    attributes[part.slice(0, colon)] = part.slice(colon + 1);
  }
  const moduleNum = Number(attributes.module_num);
  return {
    name: match[1],
    moduleNum: Number.isInteger(moduleNum) ? moduleNum : NaN,
    enabled: attributes.enabled !== 'False',
    attributes,
    settings: [],
    line: lineNumber,
  };
}

/**
 * Splits `a:1|notes:['x|y', "it's"]|b:2` at the `|` that separate attributes, ignoring `|` inside
 * quoted strings and brackets (notes are a Python list literal and may contain pipes; batch_state is
 * `array([], dtype=uint8)`).
 */
function splitAttributes(body: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quote: string | undefined;
  let start = 0;
  for (let i = 0; i < body.length; i++) {
    const ch = body[i];
    if (quote) {
      if (ch === '\\') i++;
      else if (ch === quote) quote = undefined;
      continue;
    }
    if (ch === "'" || ch === '"') quote = ch;
    else if (ch === '[' || ch === '(' || ch === '{') depth++;
    else if (ch === ']' || ch === ')' || ch === '}') depth = Math.max(0, depth - 1);
    else if (ch === '|' && depth === 0) {
      parts.push(body.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(body.slice(start));
  return parts;
}

/** Value of the first setting with this text, or undefined. */
export function settingValue(module: PipelineModule, text: string): string | undefined {
  return module.settings.find((s) => s.text === text)?.value;
}
