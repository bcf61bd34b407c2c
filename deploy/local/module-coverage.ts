/**
 * The module-coverage check: runs test/fixtures/module-coverage/module-coverage.cppipe (30 modules:
 * illumination correction per image, three object levels, every common measurement, relate, filter,
 * classify, skeleton, display, save, export) through the cellprofiler engine on the two generated
 * image sets there, and checks what the modules produced. A module that raises is named with its
 * exception; a module that runs but produces nothing usable (empty measurements, misnamed columns,
 * missing images) is named too.
 *
 * Used by the installer's verification (a venv that fails is never marked installed) and by
 * `cpflow doctor`, which keeps one result per environment (CellProfiler build, Python, sha256 of the
 * package set) in `<cacheDir>/module-coverage/`, so doctor runs CellProfiler only when the
 * environment changed.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { cellProfilerEnvironment, environmentKey } from '../../activities/engines/cellprofiler/environment';
import { createCellProfilerEngine } from '../../activities/engines/cellprofiler';
import { probeCellProfilerVersion } from '../../core/cellprofiler';
import { parseCsvObjects } from '../../core/csv';
import { PipelineRunError, type EngineEnvironment, type EngineImageSet } from '../../activities/engines/types';

export const MODULE_COVERAGE_DIR = path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'module-coverage');
export const MODULE_COVERAGE_PIPELINE = path.join(MODULE_COVERAGE_DIR, 'module-coverage.cppipe');
export const MODULE_COVERAGE_IMAGES = path.join(MODULE_COVERAGE_DIR, 'images');
const CHANNELS = ['DNA', 'Cells', 'Mito'] as const;
export const MODULE_COVERAGE_SITES = ['s1', 's2'] as const;

export function moduleCoverageSets(imagesDir = MODULE_COVERAGE_IMAGES): EngineImageSet[] {
  return MODULE_COVERAGE_SITES.map((site) => ({
    key: `MC-A01-${site}`,
    metadata: { Plate: 'MC', Well: 'A01', Site: site.slice(1) },
    files: CHANNELS.map((channel) => ({ channel, path: path.join(imagesDir, `MC_A01_${site}_w${channel}.tif`) })),
  }));
}

const resultSchema = z.object({
  ok: z.boolean(),
  /** The first module that broke (raised, or produced nothing usable). */
  module: z.string().optional(),
  error: z.string().optional(),
  modules: z.array(z.string()),
  seconds: z.number(),
  checkedAt: z.string(),
  environment: z.object({ build: z.string(), python: z.string(), packagesSha256: z.string() }),
});
export type ModuleCoverageResult = z.infer<typeof resultSchema>;

type Row = Record<string, string>;
const readTable = (file: string): Row[] => parseCsvObjects(fs.readFileSync(file, 'utf8'));

/** Module names of the pipeline, in order (from the saved file). */
export function pipelineModules(pipelineFile = MODULE_COVERAGE_PIPELINE): string[] {
  return fs
    .readFileSync(pipelineFile, 'utf8')
    .split('\n')
    .map((line) => /^([A-Za-z]\w*):\[module_num:/.exec(line)?.[1])
    .filter((name): name is string => name !== undefined);
}

/** Ground truth of the generated images: nuclei per site. */
function expectedNuclei(): Record<string, number> {
  const truth = JSON.parse(fs.readFileSync(path.join(MODULE_COVERAGE_IMAGES, 'ground_truth.json'), 'utf8')) as Record<
    string,
    { nuclei: unknown[] }
  >;
  return Object.fromEntries(Object.entries(truth).map(([site, t]) => [site, t.nuclei.length]));
}

interface Expectation {
  module: string;
  what: string;
  holds: (tables: Record<string, Row[]>, files: string[], site: string) => boolean;
}

const finite = (v: string | undefined) => v !== undefined && v !== '' && Number.isFinite(Number(v));
const someFinite = (rows: Row[] | undefined, column: string) => (rows ?? []).some((r) => finite(r[column]));

/**
 * What each module must have produced in each set's folder (beyond not raising). Ordered as the
 * pipeline runs, so the first unmet expectation names the first module that broke.
 */
function expectations(): Expectation[] {
  const nuclei = expectedNuclei();
  return [
    { module: 'NamesAndTypes', what: 'one image set with DNA, Cells and Mito', holds: (t) => t.Image?.length === 1 && CHANNELS.every((c) => t.Image[0][`FileName_${c}`]) },
    { module: 'CorrectIlluminationApply', what: 'the corrected image CorrDNA', holds: (_, files, site) => files.includes(`MC_A01_${site}_wDNA_CorrDNA.tiff`) },
    { module: 'IdentifyPrimaryObjects', what: 'the ground-truth number of nuclei', holds: (t, _, site) => Number(t.Image?.[0]?.Count_Nuclei) === nuclei[site] && t.Nuclei?.length === nuclei[site] },
    { module: 'IdentifyPrimaryObjects', what: 'speckles in Mito', holds: (t) => Number(t.Image?.[0]?.Count_Speckles) > 0 },
    { module: 'IdentifySecondaryObjects', what: 'one cell per nucleus', holds: (t, _, site) => Number(t.Image?.[0]?.Count_Cells) === nuclei[site] },
    { module: 'IdentifyTertiaryObjects', what: 'one cytoplasm per cell', holds: (t, _, site) => Number(t.Image?.[0]?.Count_Cytoplasm) === nuclei[site] },
    { module: 'MeasureObjectIntensity', what: 'Intensity_MeanIntensity_CorrDNA of nuclei', holds: (t) => someFinite(t.Nuclei, 'Intensity_MeanIntensity_CorrDNA') },
    { module: 'MeasureObjectSizeShape', what: 'AreaShape_Area and Zernike features', holds: (t) => someFinite(t.Cells, 'AreaShape_Area') && someFinite(t.Nuclei, 'AreaShape_Zernike_0_0') },
    { module: 'MeasureTexture', what: 'Haralick features of nuclei', holds: (t) => Object.keys(t.Nuclei?.[0] ?? {}).some((c) => c.startsWith('Texture_') && someFinite(t.Nuclei, c)) },
    { module: 'MeasureObjectNeighbors', what: 'neighbour counts of cells', holds: (t) => someFinite(t.Cells, 'Neighbors_NumberOfNeighbors_Adjacent') },
    { module: 'MeasureImageQuality', what: 'focus and intensity metrics', holds: (t) => finite(t.Image?.[0]?.ImageQuality_FocusScore_DNA) },
    { module: 'MeasureColocalization', what: 'Cells/Mito correlation', holds: (t) => finite(t.Image?.[0]?.Correlation_Correlation_Cells_Mito) },
    { module: 'RelateObjects', what: 'speckles counted per cell', holds: (t) => someFinite(t.Cells, 'Children_Speckles_Count') && someFinite(t.Speckles, 'Parent_Cells') },
    { module: 'FilterObjects', what: 'LargeNuclei, a subset of Nuclei', holds: (t) => Number(t.Image?.[0]?.Count_LargeNuclei) > 0 && Number(t.Image?.[0]?.Count_LargeNuclei) <= Number(t.Image?.[0]?.Count_Nuclei) },
    { module: 'ClassifyObjects', what: 'bin measurements and class images', holds: (t, files, site) => someFinite(t.Nuclei, 'Classify_Intensity_MeanIntensity_CorrDNA_Bin_1') && files.includes(`MC_A01_${site}_wDNA_CellClasses.png`) },
    { module: 'MeasureObjectSkeleton', what: 'neurite trunks of nuclei', holds: (t) => (t.Nuclei ?? []).some((r) => Number(r.ObjectSkeleton_NumberTrunks_NeuriteSkeleton) > 0) },
    { module: 'DisplayDataOnImage', what: 'the rendered measurement image', holds: (_, files, site) => files.includes(`MC_A01_${site}_wDNA_NucleiAreaColours.png`) },
    {
      module: 'ExportToSpreadsheet',
      // Python 3.11+ formats CellProfiler's str-Enum feature names as `Class.MEMBER`.
      what: 'measurement columns named as CellProfiler declares them (no `Enum.MEMBER` names)',
      holds: (t) => Object.values(t).every((rows) => Object.keys(rows[0] ?? {}).every((c) => !/[A-Za-z]\.[A-Z_]{2,}/.test(c))),
    },
  ];
}

/**
 * Runs the pipeline through the cellprofiler engine (as a worker would, both sets in one invocation)
 * and checks every expectation. Never throws for a CellProfiler failure: the result says which module.
 */
export async function runModuleCoverage(executable: string, log: (line: string) => void = () => undefined): Promise<ModuleCoverageResult> {
  const started = Date.now();
  const build = await probeCellProfilerVersion(executable);
  const environment = await cellProfilerEnvironment(executable, build);
  const modules = pipelineModules();
  const work = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'cpflow-module-coverage-'));
  const finish = (fields: { ok: boolean; module?: string; error?: string }): ModuleCoverageResult => ({
    ...fields,
    modules,
    seconds: (Date.now() - started) / 1000,
    checkedAt: new Date().toISOString(),
    environment,
  });
  try {
    const sets = moduleCoverageSets();
    const engine = createCellProfilerEngine({ executable });
    let result;
    try {
      result = await engine.run({
        imageSets: sets,
        pipelinePath: MODULE_COVERAGE_PIPELINE,
        timeoutMs: 10 * 60 * 1000,
        outDir: path.join(work, 'out'),
        tmpDir: path.join(work, 'tmp'),
        onProgress: (detail) => log(detail),
      });
    } catch (err) {
      if (err instanceof PipelineRunError && err.moduleName) {
        return finish({ ok: false, module: err.moduleName, error: err.exception ?? err.message.split('\n')[0] });
      }
      const message = err instanceof Error ? err.message : String(err);
      return finish({ ok: false, error: message.split('\n').slice(0, 12).join('\n') });
    }
    for (const expectation of expectations()) {
      for (const [index, set] of sets.entries()) {
        const site = MODULE_COVERAGE_SITES[index];
        const dir = path.join(work, 'out', set.key);
        const files = result.sets[index]?.files ?? [];
        const tables: Record<string, Row[]> = {};
        for (const f of files.filter((n) => n.endsWith('.csv'))) tables[f.slice(0, -4)] = readTable(path.join(dir, f));
        if (!expectation.holds(tables, files, site)) {
          return finish({ ok: false, module: expectation.module, error: `ran, but did not produce ${expectation.what} in image set ${set.key}` });
        }
      }
    }
    log(`module coverage: ${modules.length} modules ran and produced what they should on ${sets.length} image sets`);
    return finish({ ok: true });
  } finally {
    await fs.promises.rm(work, { recursive: true, force: true });
  }
}

/** One line for people: `ok …` or the first module that broke. */
export function describeModuleCoverage(r: ModuleCoverageResult): string {
  const env = `CellProfiler ${r.environment.build}, Python ${r.environment.python}, packages ${r.environment.packagesSha256.slice(0, 12)}`;
  if (r.ok) return `${r.modules.length} modules of the module-coverage pipeline run (${env})`;
  return `module ${r.module ?? '(none identified)'} breaks: ${r.error ?? 'unknown error'} (${env})`;
}

/**
 * One cached result per executable and environment: the same venv behind another entry point (a
 * wrapper, a different CellProfiler launcher) is checked on its own.
 */
export function moduleCoverageCacheFile(cacheDir: string, executable: string, environment: EngineEnvironment): string {
  const key = createHash('sha256').update(`${path.resolve(executable)}\n${environmentKey(environment)}`).digest('hex');
  return path.join(cacheDir, 'module-coverage', `${key}.json`);
}

/**
 * The module-coverage result for the environment behind `executable`: from the cache when this exact
 * environment was checked before, else a fresh run (then cached, passing or not: the same environment
 * fails the same way). `fresh` ignores the cache.
 */
export async function cachedModuleCoverage(
  cacheDir: string,
  executable: string,
  opts: { fresh?: boolean; log?: (line: string) => void } = {},
): Promise<ModuleCoverageResult & { cached: boolean }> {
  const environment = await cellProfilerEnvironment(executable, await probeCellProfilerVersion(executable));
  const file = moduleCoverageCacheFile(cacheDir, executable, environment);
  if (!opts.fresh) {
    try {
      const parsed = resultSchema.safeParse(JSON.parse(await fs.promises.readFile(file, 'utf8')));
      if (parsed.success) return { ...parsed.data, cached: true };
    } catch {
      // No usable cached result: run it.
    }
  }
  const result = await runModuleCoverage(executable, opts.log);
  await fs.promises.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.promises.writeFile(tmp, `${JSON.stringify(result, null, 2)}\n`);
  await fs.promises.rename(tmp, file);
  return { ...result, cached: false };
}
