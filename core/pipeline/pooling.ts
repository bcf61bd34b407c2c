/**
 * Modules and settings whose results depend on OTHER image sets of the run. Split into one
 * CellProfiler invocation per image set (or per batch of arbitrary sets), such a pipeline computes
 * different numbers than CellProfiler run on all the files, so cpflow accepts it only with
 * `--group-by` (one invocation per group: CellProfiler sees the whole group, as it would run it).
 * Modules whose cross-set values go only into the Experiment table (experiment-wide statistics) are
 * accepted with a warning: their per-image measurements are unaffected.
 *
 * The list follows CellProfiler's own notion of an aggregation module (`Module.is_aggregation_module`:
 * CorrectIlluminationCalculate in "All" mode, MakeProjection, RescaleIntensity from all images,
 * SaveImages of movies or at the last cycle, Tile across cycles, TrackObjects) plus the modules that
 * compute experiment-wide values at the end of a run (CalculateStatistics, MeasureImageQuality's
 * experiment thresholds, ExportToSpreadsheet's GenePattern file). When CellProfiler is installed
 * where `submit` runs, it is also asked directly (core/pipeline/inspect.ts), which covers plugins.
 */
import { settingValue, type Pipeline, type PipelineModule } from './cppipe';

export interface PoolingFinding {
  module: string;
  moduleNum: number;
  /**
   * `pools`: image or object measurements depend on other image sets (refused without --group-by);
   * `experiment-wide`: only Experiment-table values are computed over the run's image sets, per-image
   * measurements are unaffected (accepted with a warning: split runs compute them per set or group).
   */
  kind: 'pools' | 'experiment-wide';
  /** The setting that makes it pool, with its value; absent when the module always pools. */
  setting?: string;
  value?: string;
  /** What is computed across image sets. */
  why: string;
}

type Check = (m: PipelineModule) => Omit<PoolingFinding, 'module' | 'moduleNum' | 'kind'> | undefined;

interface Rule {
  module: string;
  kind: PoolingFinding['kind'];
  check: Check;
}

const when = (text: string, test: (value: string) => boolean, why: string) => (m: PipelineModule) => {
  const value = settingValue(m, text);
  return value !== undefined && test(value.trim()) ? { setting: text, value: value.trim(), why } : undefined;
};

const anyOf =
  (...checks: Check[]) =>
  (m: PipelineModule) => {
    for (const check of checks) {
      const found = check(m);
      if (found) return found;
    }
    return undefined;
  };

/** Every setting with this text (repeated groups, e.g. one per image in MeasureImageQuality). */
const whenAny = (text: string, test: (value: string) => boolean, why: string) => (m: PipelineModule) => {
  const hit = m.settings.find((s) => s.text === text && test(s.value.trim()));
  return hit ? { setting: text, value: hit.value.trim(), why } : undefined;
};

export const POOLING_RULES: readonly Rule[] = [
  {
    module: 'CorrectIlluminationCalculate',
    kind: 'pools',
    // CellProfiler 5 says "All"; pipelines from CellProfiler ≤ 4 say "All: First cycle" / "All: Across cycles".
    check: when(
      'Calculate function for each image individually, or based on all images?',
      (v) => v.startsWith('All'),
      'the illumination function is computed from every image set of the group',
    ),
  },
  { module: 'TrackObjects', kind: 'pools', check: () => ({ why: 'objects are tracked from one image set to the next' }) },
  { module: 'MakeProjection', kind: 'pools', check: () => ({ why: 'the projection combines the images of every image set of the group' }) },
  {
    module: 'RescaleIntensity',
    kind: 'pools',
    check: anyOf(
      when('Method to calculate the minimum intensity', (v) => v === 'Minimum of all images', 'the minimum is taken over every image set'),
      when('Method to calculate the maximum intensity', (v) => v === 'Maximum of all images', 'the maximum is taken over every image set'),
    ),
  },
  {
    module: 'SaveImages',
    kind: 'pools',
    check: anyOf(
      when('Select the type of image to save', (v) => v === 'Movie/Stack', 'a movie is assembled from every image set'),
      when('When to save', (v) => v === 'Last cycle', 'the image is saved once, after the last image set of the group'),
    ),
  },
  { module: 'Tile', kind: 'pools', check: when('Tile assembly method', (v) => v === 'Across cycles', 'tiles are assembled across image sets') },
  { module: 'CalculateStatistics', kind: 'experiment-wide', check: () => ({ why: 'its statistics (Z-factors, dose-response) are computed over every image set' }) },
  {
    module: 'MeasureImageQuality',
    kind: 'experiment-wide',
    check: whenAny('Calculate thresholds?', (v) => v === 'Yes', 'it also records the mean, median and spread of the thresholds over every image set (Experiment table)'),
  },
  {
    module: 'ExportToSpreadsheet',
    kind: 'experiment-wide',
    check: when('Create a GenePattern GCT file?', (v) => v === 'Yes', 'the GenePattern file gathers every image set'),
  },
];

/** Enabled modules of the pipeline that pool image sets, in pipeline order. */
export function poolingFindings(p: Pipeline): PoolingFinding[] {
  const findings: PoolingFinding[] = [];
  for (const m of p.modules) {
    if (!m.enabled) continue;
    for (const rule of POOLING_RULES) {
      if (rule.module !== m.name) continue;
      const found = rule.check(m);
      if (found) findings.push({ module: m.name, moduleNum: m.moduleNum, kind: rule.kind, ...found });
    }
  }
  return findings;
}

/** One sentence naming the module, the setting and what it computes across image sets. */
export function describePooling(f: PoolingFinding): string {
  const setting = f.setting ? ` ("${f.setting}" is "${f.value}")` : '';
  return f.kind === 'pools'
    ? `${f.module} (module ${f.moduleNum}) pools image sets${setting}: ${f.why}`
    : `${f.module} (module ${f.moduleNum}) computes experiment-wide values${setting}: ${f.why}`;
}

/** Metadata keys of an enabled Groups module that groups images, else undefined. */
export function pipelineGroupingKeys(p: Pipeline): string[] | undefined {
  const groups = p.modules.find((m) => m.enabled && m.name === 'Groups');
  if (!groups || settingValue(groups, 'Do you want to group your images?') !== 'Yes') return undefined;
  return groups.settings
    .filter((s) => s.text === 'Metadata category')
    .map((s) => s.value.trim())
    .filter((v) => v !== '' && v !== 'None');
}
