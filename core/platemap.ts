/**
 * Platemaps: which treatment each well got, in the layout pycytominer's `annotate` reads
 * (a CSV with a `well_position` column, e.g. `A01`, and any annotation columns: `treatment`, `dose`,
 * `control_type`, …). Checked at `cpflow submit --platemap` against the experiment's wells, so a
 * platemap that cannot annotate the experiment is refused before anything is uploaded.
 *
 * One platemap describes every plate of the experiment (the usual case: one layout, many plates).
 * Wells are compared as written: pycytominer joins `well_position` to the images' `Metadata_Well`
 * as strings, so `A1` does not match `A01`.
 */
import { parseCsvText } from './csv';
import { UsageError } from './errors';
import { DEFAULTS, PLATEMAP_COLUMN, type Controls } from './model';

export const WELL_COLUMN = 'well_position';
/** A well name: one or two row letters, then the column number (A01, P24, AF48). */
const WELL_NAME = /^[A-Za-z]{1,2}\d{1,3}$/;

export interface Platemap {
  fileName: string;
  columns: string[];
  /** well_position → that row's cells by column name. */
  wells: Map<string, Record<string, string>>;
}

/** What a platemap does for an experiment once checked: the controls to normalise against and its coverage. */
export interface PlatemapCheck {
  controls: Controls | null;
  /** Experiment wells (all of them: wells without an entry are refused). */
  wells: number;
  /** Experiment wells that are controls. */
  controlWells: number;
  /** Platemap rows for wells the experiment has no images of (allowed: a platemap often describes the whole plate). */
  unusedRows: number;
}

/** `--controls`: a column and value, `none` (normalise against whole plates), or unset (the default column, when present). */
export type ControlsChoice = Controls | 'none' | undefined;

function fail(fileName: string, message: string): never {
  throw new UsageError(`--platemap ${fileName}: ${message}`);
}

const listed = (items: string[], max = 5): string => `${items.slice(0, max).join(', ')}${items.length > max ? `, … (${items.length} in all)` : ''}`;

export function parsePlatemap(text: string, fileName: string): Platemap {
  let records: string[][];
  try {
    records = parseCsvText(text, { trim: true });
  } catch (err) {
    fail(fileName, `not a readable CSV (${err instanceof Error ? err.message : String(err)})`);
  }
  const [header, ...rows] = records;
  if (!header || header.length === 0) fail(fileName, 'is empty');
  const duplicateColumn = header.find((c, i) => header.indexOf(c) !== i);
  if (duplicateColumn !== undefined) fail(fileName, `column ${duplicateColumn} appears twice`);
  const wellIndex = header.indexOf(WELL_COLUMN);
  if (wellIndex < 0) {
    fail(fileName, `has no ${WELL_COLUMN} column (pycytominer's platemap layout: ${WELL_COLUMN}, then annotation columns such as treatment, dose, control_type); columns: ${listed(header)}`);
  }
  if (rows.length === 0) fail(fileName, 'lists no wells');
  const wells = new Map<string, Record<string, string>>();
  const firstLine = new Map<string, number>();
  rows.forEach((row, i) => {
    const line = i + 2;
    const well = row[wellIndex] ?? '';
    if (!WELL_NAME.test(well)) fail(fileName, `line ${line}: ${WELL_COLUMN} "${well}" is not a well like A01`);
    if (wells.has(well)) fail(fileName, `well ${well} is listed twice (lines ${firstLine.get(well)} and ${line})`);
    firstLine.set(well, line);
    wells.set(well, Object.fromEntries(header.map((c, k) => [c, row[k] ?? ''])));
  });
  return { fileName, columns: header, wells };
}

/** `control_type=negcon` → {column, value}; `none` → 'none'. */
export function parseControlsChoice(spec: string): Exclude<ControlsChoice, undefined> {
  if (spec.trim().toLowerCase() === 'none') return 'none';
  const match = /^([^=]+)=(.+)$/.exec(spec.trim());
  if (!match?.[1] || !match[2]) throw new UsageError(`--controls "${spec}": expected column=value (e.g. control_type=negcon) or none`);
  const column = match[1].trim();
  const value = match[2].trim();
  if (!PLATEMAP_COLUMN.test(column)) throw new UsageError(`--controls "${spec}": column ${column} must be letters, digits and _`);
  if (/['"\\]/.test(value)) throw new UsageError(`--controls "${spec}": the value may not contain quotes or backslashes`);
  return { column, value };
}

/**
 * Checks the platemap against the experiment's wells: every experiment well must be in it (a well
 * without an entry would silently drop out of the profiles), it must cover at least one well, and
 * the control label must match at least one experiment well.
 */
export function checkPlatemap(platemap: Platemap, experimentWells: readonly string[], choice: ControlsChoice): PlatemapCheck {
  const { fileName } = platemap;
  const wells = [...new Set(experimentWells)].sort();
  const covered = wells.filter((w) => platemap.wells.has(w));
  if (covered.length === 0) {
    fail(fileName, `covers none of the experiment's ${wells.length} wells (platemap: ${listed([...platemap.wells.keys()], 3)}; images: ${listed(wells, 3)})`);
  }
  const unknown = wells.filter((w) => !platemap.wells.has(w));
  if (unknown.length > 0) fail(fileName, `has no entry for wells ${listed(unknown)} of the experiment (${unknown.length} of ${wells.length})`);

  let controls: Controls | null;
  if (choice === 'none') controls = null;
  else if (choice !== undefined) controls = choice;
  else controls = platemap.columns.includes(DEFAULTS.PROFILES_CONTROL_COLUMN) ? { column: DEFAULTS.PROFILES_CONTROL_COLUMN, value: DEFAULTS.PROFILES_CONTROL_VALUE } : null;

  let controlWells = 0;
  if (controls) {
    const { column, value } = controls;
    if (!platemap.columns.includes(column)) fail(fileName, `has no column ${column} for --controls ${column}=${value}; columns: ${listed(platemap.columns)}`);
    if (!PLATEMAP_COLUMN.test(column)) fail(fileName, `control column ${column} must be letters, digits and _`);
    controlWells = covered.filter((w) => platemap.wells.get(w)?.[column] === value).length;
    if (controlWells === 0) {
      const values = [...new Set(covered.map((w) => platemap.wells.get(w)?.[column] ?? ''))].filter((v) => v !== '').sort();
      fail(
        fileName,
        `control label ${column}=${value} matches none of the experiment's wells (${column} there: ${values.length ? listed(values) : 'all empty'}); ` +
          'name the control wells with --controls column=value, or --controls none to normalise against whole plates',
      );
    }
  }
  return { controls, wells: wells.length, controlWells, unusedRows: platemap.wells.size - covered.length };
}

/** The wells of image sets, from their `Well` metadata; fails naming a set without one. */
export function wellsOfSets(sets: readonly { key: string; metadata: Record<string, string> }[], fileName: string): string[] {
  return sets.map((s) => {
    const well = s.metadata.Well;
    if (!well) fail(fileName, `image set ${s.key} has no Well metadata (the grouping rule needs a (?<Well>…) group for a platemap)`);
    return well;
  });
}
