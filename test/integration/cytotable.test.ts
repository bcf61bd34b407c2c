/**
 * cpflow's per-image-set folders (`cpflow/<experiment>/sets/<set key>/` with Image.csv, Cells.csv,
 * Cytoplasm.csv, Nuclei.csv, ... and provenance.json; DESIGN.md §3) read by CytoTable's
 * `cellprofiler_csv` preset, converted to Parquet and checked with DuckDB in CytoTable's venv.
 *
 * Input: the ExampleHuman reference output (CellProfiler 4.0.6, 289 cells) laid out as cpflow lays
 * out sets. cpflow's engine downloads every set into its own work directory, so the Image.csv of two
 * sets differ in PathName_* / URL_* even for the same images; the copies here do the same.
 *
 * What was found (and is pinned by the tests below), and what cpflow does about it:
 * - One set folder converts with the stock preset: one row per cytoplasm object.
 * - Several set folders do NOT convert correctly with the stock preset: every CellProfiler run
 *   numbers its image 1, CytoTable tags each folder with a TableNumber (CRC32 of its Image.csv) but
 *   the preset joins on ImageNumber alone, so rows multiply across sets. Joining on
 *   (TableNumber, ImageNumber) — `--join-by-set` of test/support/cytotable_convert.py — fixes it.
 * - cpflow therefore writes each set's id as its ImageNumber (unique within an experiment), so its own
 *   per-set folders convert across sets with the stock preset; the last test checks that on real
 *   CellProfiler output.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'csv-parse/sync';
import execa from 'execa';
import { z } from 'zod';
import { cytoTablePython, installCytoTable, CYTOTABLE_VERSION } from '../../deploy/local/cytotable';
import { cacheDir } from '../../deploy/local/state';
import { createCellProfilerEngine } from '../../activities/engines/cellprofiler';
import { EXAMPLE_HUMAN } from '../support/fixtures';

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const EXAMPLEHUMAN = EXAMPLE_HUMAN;
const REFERENCE = path.join(EXAMPLEHUMAN, 'reference-output');
const CONVERT_SCRIPT = path.join(REPO_ROOT, 'test', 'support', 'cytotable_convert.py');
const SET_KEYS = ['SET-A', 'SET-B'] as const;

/**
 * Why the tests cannot run, decided before jest collects them so a failed install is reported as
 * skipped with its reason. Installing takes about two minutes once; later runs reuse the venv.
 */
function skipReasonAtLoad(): string | undefined {
  if (!fs.existsSync(path.join(REFERENCE, 'Cells.csv'))) return `reference output missing at ${REFERENCE}`;
  const unavailable = process.env.CPFLOW_CYTOTABLE_UNAVAILABLE?.trim();
  if (unavailable) return `CytoTable could not be installed: ${unavailable}`;
  if (cytoTablePython(cacheDir())) return undefined;
  const install = spawnSync(
    process.execPath,
    [require.resolve('tsx/cli'), path.join(REPO_ROOT, 'deploy', 'local', 'cytotable.ts'), cacheDir()],
    { encoding: 'utf8', timeout: 30 * 60 * 1000, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  if (install.status === 0) return undefined;
  const lastLines = `${install.stderr ?? ''}`.trim().split('\n').slice(-5).join(' | ');
  return `CytoTable ${CYTOTABLE_VERSION} could not be installed (exit ${install.status ?? install.signal}): ${lastLines}`;
}

const skipReason = skipReasonAtLoad();
if (skipReason) console.warn(`SKIPPED cytotable integration tests: ${skipReason}`);
const maybe = skipReason ? it.skip : it;

const cellProfiler = process.env.CPFLOW_CELLPROFILER;
const realOutputSkip = skipReason ?? (cellProfiler ? undefined : `CellProfiler is not installed (${process.env.CPFLOW_CELLPROFILER_UNAVAILABLE ?? 'CPFLOW_CELLPROFILER unset'})`);
if (!skipReason && realOutputSkip) console.warn(`SKIPPED cytotable check of cpflow's own output: ${realOutputSkip}`);
const maybeReal = realOutputSkip ? it.skip : it;

type Row = Record<string, string>;
const readCsv = (file: string): Row[] => parse(fs.readFileSync(file), { columns: true, skip_empty_lines: true }) as Row[];

/** What the DuckDB inspection below reports about one Parquet file. */
const inspectionSchema = z.object({
  rows: z.number().int(),
  columns: z.array(z.string()),
  rowsPerTableNumber: z.record(z.string(), z.number().int()).nullable(),
  distinctObjects: z.number().int().nullable(),
  nucleiAreaMismatches: z.number().int().nullable(),
  cellsAreaMismatches: z.number().int().nullable(),
  distinctImageObjects: z.number().int(),
});
type Inspection = z.infer<typeof inspectionSchema>;

/**
 * Reads the Parquet file with DuckDB (CytoTable's own dependency) and, when a reference folder is
 * given, checks the join: each row's nucleus and cell area must be the area of the nucleus / cell
 * that its cytoplasm names as parent (Parent_Nuclei / Parent_Cells) in that reference's CSVs.
 */
const INSPECT_PY = String.raw`
import json, sys, duckdb
parquet, reference = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
lit = lambda text: "'" + text.replace("'", "''") + "'"  # DDL cannot take prepared parameters
con.execute(f"CREATE VIEW p AS SELECT * FROM read_parquet({lit(parquet)})")
columns = [row[0] for row in con.execute("DESCRIBE p").fetchall()]
out = {"rows": con.execute("SELECT count(*) FROM p").fetchone()[0], "columns": columns,
       "rowsPerTableNumber": None, "distinctObjects": None, "nucleiAreaMismatches": None, "cellsAreaMismatches": None}
out["distinctImageObjects"] = con.execute(
    "SELECT count(DISTINCT (Metadata_ImageNumber, Metadata_ObjectNumber)) FROM p").fetchone()[0]
if "Metadata_TableNumber" in columns:
    out["rowsPerTableNumber"] = {str(k): v for k, v in con.execute(
        "SELECT Metadata_TableNumber, count(*) FROM p GROUP BY 1").fetchall()}
    out["distinctObjects"] = con.execute(
        "SELECT count(DISTINCT (Metadata_TableNumber, Metadata_ImageNumber, Metadata_ObjectNumber)) FROM p").fetchone()[0]
if reference:
    for key, table, parent, column in [("nucleiAreaMismatches", "Nuclei", "Metadata_Cytoplasm_Parent_Nuclei", "Nuclei_AreaShape_Area"),
                                       ("cellsAreaMismatches", "Cells", "Metadata_Cytoplasm_Parent_Cells", "Cells_AreaShape_Area")]:
        out[key] = con.execute(f"""
            SELECT count(*) FROM p LEFT JOIN read_csv_auto({lit(f"{reference}/{table}.csv")}) AS ref ON ref.ObjectNumber = p.{parent}
            WHERE ref.ObjectNumber IS NULL OR CAST(ref.AreaShape_Area AS DOUBLE) <> CAST(p.{column} AS DOUBLE)
        """).fetchone()[0]
print(json.dumps(out))
`;

let python = '';
let work = '';

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-cytotable-it-'));
  if (skipReason) return;
  const installed = await installCytoTable(cacheDir(), (line) => console.log(line));
  python = installed.python;
  console.log(`CytoTable ${installed.version} ready in ${installed.seconds.toFixed(1)} s (${python})`);
}, 30 * 60 * 1000);

afterAll(async () => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

/**
 * `<root>/sets/<key>/` per key: the reference CSVs, the image folder in Image.csv replaced by a
 * per-set work directory (as cpflow's engine produces), and a provenance.json like cpflow's.
 */
function referenceSets(root: string, keys: readonly string[]): string {
  const imageRow = readCsv(path.join(REFERENCE, 'Image.csv'))[0];
  const imageFolder = imageRow?.PathName_DNA;
  if (!imageFolder) throw new Error('reference Image.csv has no PathName_DNA');
  for (const key of keys) {
    const dir = path.join(root, 'sets', key);
    fs.mkdirSync(dir, { recursive: true });
    for (const file of fs.readdirSync(REFERENCE).filter((f) => f.endsWith('.csv'))) {
      const text = fs.readFileSync(path.join(REFERENCE, file), 'utf8');
      fs.writeFileSync(path.join(dir, file), file === 'Image.csv' ? text.split(imageFolder).join(`/tmp/cpflow-work-${key}/input`) : text);
    }
    fs.writeFileSync(path.join(dir, 'provenance.json'), `${JSON.stringify({ kind: 'cpflow.image-set-provenance/v1', imageSet: { key } })}\n`);
  }
  return root;
}

async function convert(sourceDir: string, name: string, extraArgs: string[] = []): Promise<string> {
  const dest = path.join(work, `${name}.parquet`);
  const result = await execa(python, [CONVERT_SCRIPT, sourceDir, dest, ...extraArgs], { reject: false, all: true, stdin: 'ignore' });
  if (result.exitCode !== 0) {
    throw new Error(`cytotable_convert.py failed (exit ${result.exitCode}):\n${(result.all ?? '').split('\n').slice(-30).join('\n')}`);
  }
  const summary = z.object({ dest: z.string(), seconds: z.number(), cytotable: z.string() }).parse(JSON.parse(result.stdout.trim().split('\n').pop() ?? ''));
  console.log(`${name}: CytoTable ${summary.cytotable} converted ${sourceDir} in ${summary.seconds.toFixed(1)} s`);
  return summary.dest;
}

async function inspect(parquet: string, reference?: string): Promise<Inspection> {
  const { stdout } = await execa(python, ['-c', INSPECT_PY, parquet, ...(reference ? [reference] : [])], { stdin: 'ignore' });
  return inspectionSchema.parse(JSON.parse(stdout));
}

const cellsPerSet = (): number => readCsv(path.join(REFERENCE, 'Cells.csv')).length;

describe('CytoTable cellprofiler_csv preset on cpflow per-set folders', () => {
  maybe('one set folder converts with the stock preset: one row per cell, joined to its own nucleus and cell', async () => {
    const root = referenceSets(path.join(work, 'one'), ['SET-A']);
    const result = await inspect(await convert(path.join(root, 'sets'), 'one-set'), REFERENCE);
    expect(result.rows).toBe(cellsPerSet());
    expect(result.columns).toEqual(
      expect.arrayContaining([
        'Metadata_ImageNumber',
        'Metadata_ObjectNumber',
        'Metadata_Cytoplasm_Parent_Cells',
        'Metadata_Cytoplasm_Parent_Nuclei',
        'Image_FileName_DNA',
        'Cytoplasm_AreaShape_Area',
        'Cells_AreaShape_Area',
        'Nuclei_AreaShape_Area',
      ]),
    );
    // The tables outside the preset (PH3, Experiment) and provenance.json are ignored, not merged.
    expect(result.columns.some((c) => c.startsWith('PH3_') || c.startsWith('Experiment_'))).toBe(false);
    expect(result.nucleiAreaMismatches).toBe(0);
    expect(result.cellsAreaMismatches).toBe(0);
  }, 300_000);

  maybe('two set folders convert to one row per cell per set when joined by set (--join-by-set)', async () => {
    const root = referenceSets(path.join(work, 'two'), SET_KEYS);
    const result = await inspect(await convert(path.join(root, 'sets'), 'two-sets', ['--join-by-set']), REFERENCE);
    const perSet = cellsPerSet();
    expect(result.rows).toBe(perSet * SET_KEYS.length);
    // One TableNumber per set folder, each holding exactly that set's cells, none repeated.
    expect(Object.values(result.rowsPerTableNumber ?? {})).toEqual(SET_KEYS.map(() => perSet));
    expect(result.distinctObjects).toBe(result.rows);
    expect(result.columns).toEqual(expect.arrayContaining(['Metadata_TableNumber', 'Metadata_ImageNumber', 'Nuclei_AreaShape_Area']));
    expect(result.nucleiAreaMismatches).toBe(0);
    expect(result.cellsAreaMismatches).toBe(0);
  }, 300_000);

  maybe('the stock preset join ignores TableNumber, so several set folders multiply rows (the reason for --join-by-set)', async () => {
    const root = referenceSets(path.join(work, 'stock'), SET_KEYS);
    const result = await inspect(await convert(path.join(root, 'sets'), 'two-sets-stock'));
    // Every set's image is ImageNumber 1, so each cytoplasm row of every set matches one cell, one
    // nucleus and one image row in every set: sets × sets³ rows per cell instead of one.
    expect(result.rows).toBe(cellsPerSet() * SET_KEYS.length ** 4);
  }, 300_000);

  maybeReal("cpflow's own CellProfiler output, numbered by image set id, converts across sets with the stock preset", async () => {
    // What analyzeImageSets does: each set's tables carry the set's id as ImageNumber.
    const engine = createCellProfilerEngine({ executable: cellProfiler! });
    const outDir = path.join(work, 'real-out');
    const tmpDir = path.join(work, 'real-tmp');
    fs.mkdirSync(outDir, { recursive: true });
    fs.mkdirSync(tmpDir, { recursive: true });
    const files = (['DNA', 'PH3', 'cellbody'] as const).map((channel, i) => ({ channel, path: path.join(EXAMPLEHUMAN, 'images', `AS_09125_050116030001_D03f00d${i}.tif`) }));
    const run = await engine.run({
      imageSets: [
        { key: 'SET-A', metadata: {}, files, imageNumber: 101 },
        { key: 'SET-B', metadata: {}, files, imageNumber: 102 },
      ],
      pipelinePath: path.join(EXAMPLEHUMAN, 'ExampleHuman.cppipe'),
      outDir,
      tmpDir,
    });
    expect(run.sets.map((x) => x.key)).toEqual(['SET-A', 'SET-B']);
    const root = path.join(work, 'real', 'sets');
    let cells = 0;
    for (const key of ['SET-A', 'SET-B']) {
      fs.mkdirSync(path.join(root, key), { recursive: true });
      for (const f of fs.readdirSync(path.join(outDir, key)).filter((n) => n.endsWith('.csv'))) {
        fs.copyFileSync(path.join(outDir, key, f), path.join(root, key, f));
      }
      cells += readCsv(path.join(root, key, 'Cells.csv')).length;
    }
    const result = await inspect(await convert(root, 'cpflow-numbered'));
    expect(result.rows).toBe(cells);
    expect(result.distinctImageObjects).toBe(cells);
    expect(result.columns).toEqual(expect.arrayContaining(['Metadata_ImageNumber', 'Nuclei_AreaShape_Area', 'Image_FileName_DNA']));
  }, 600_000);
});
