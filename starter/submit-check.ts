/**
 * `cpflow submit` asks CellProfiler itself, where it is installed, whether each stage's pipeline
 * makes exactly the expected image sets from the experiment's files, laid out as the engine lays
 * them out (one folder per image set, a LoadData CSV for LoadData pipelines), before anything is
 * registered: a rule that matches none of the files is refused here, with CellProfiler's own words,
 * instead of failing every set at run time. It also learns which modules CellProfiler itself counts
 * as aggregating across image sets (plugins included) and collects its warnings.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeLoadDataCsv } from '../activities/engines/cellprofiler/load-data';
import { setFolderName } from '../activities/engines/cellprofiler/split-outputs';
import type { EngineImageSet } from '../activities/engines/types';
import { DEFAULTS, stageInputFileName } from '../core/model';
import { inspectPipeline } from '../core/pipeline/inspect';
import type { PoolingFinding } from '../core/pipeline/pooling';
import { configuredCellProfiler, configuredPlugins, pythonBeside } from '../core/cellprofiler';
import type { SourceSet } from './submit-sources';
import { checkGrouping, StagePlanError, type PlannedStage } from './submit-stages';

export interface CheckSet {
  key: string;
  metadata: Record<string, string>;
  files: Array<{ channel: string; name: string; local?: string }>;
}

export interface CheckOutcome {
  warnings: string[];
  /** Modules CellProfiler says aggregate across image sets that cpflow's own list did not name. */
  aggregation: PoolingFinding[];
  checkedSets: number;
}

export async function checkStageWithCellProfiler(
  stage: PlannedStage,
  sample: CheckSet[],
  upstream: PlannedStage | undefined,
  opts: { python: string; pluginsDir?: string },
): Promise<CheckOutcome> {
  if (!stage.pipelinePath || !stage.info) return { warnings: [], aggregation: [], checkedSets: 0 };
  const root = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'cpflow-submit-check-'));
  try {
    const engineSets: EngineImageSet[] = [];
    const linked: Array<Map<string, string>> = [];
    for (const [index, set] of sample.entries()) {
      const dir = path.join(root, 'input', setFolderName(index));
      await fs.promises.mkdir(dir, { recursive: true });
      const links = new Map<string, string>();
      const files = [
        ...set.files,
        // Files an earlier stage will write: their names are known, their contents do not matter here.
        ...stage.inputs.map((i) => ({
          channel: i.as,
          name: path.posix.basename(stageInputFileName(i.file, Object.fromEntries((upstream?.groupBy ?? []).map((k) => [k, set.metadata[k] ?? ''])))),
          local: undefined,
        })),
      ];
      for (const f of files) {
        const link = path.join(dir, f.name);
        // Local files are linked; files only in S3 get an empty stand-in with the same name (the input
        // modules' rules look at names, not at pixels).
        if (f.local) await fs.promises.symlink(path.resolve(f.local), link);
        else await fs.promises.writeFile(link, '');
        links.set(f.channel, link);
      }
      linked.push(links);
      engineSets.push({ key: set.key, metadata: set.metadata, files: files.map((f) => ({ channel: f.channel, path: links.get(f.channel) ?? '' })) });
    }
    const loadData = stage.info.input === 'loaddata';
    const listFile = path.join(root, loadData ? 'load_data.csv' : 'files.txt');
    if (loadData) await writeLoadDataCsv(listFile, engineSets, linked);
    else await fs.promises.writeFile(listFile, `${linked.flatMap((m) => [...m.values()]).join('\n')}\n`);

    const inspection = await inspectPipeline({
      python: opts.python,
      pipeline: stage.pipelinePath,
      ...(loadData ? { dataFile: listFile } : { fileList: listFile }),
      pluginsDir: opts.pluginsDir,
      timeoutMs: DEFAULTS.SUBMIT_CHECK_TIMEOUT_SECONDS * 1000,
    });

    if (inspection.loadError) {
      const unknown = /Could not find the (\S+) module/.exec(inspection.loadError);
      throw new StagePlanError(
        `${stage.label}: CellProfiler cannot load the pipeline: ${inspection.loadError}` +
          (unknown ? ` (${unknown[1]} is not a CellProfiler module: if it is a plugin, set CPFLOW_CELLPROFILER_PLUGINS to its directory here and on the workers)` : ''),
      );
    }
    const said = inspection.logWarnings.length > 0 ? ` (CellProfiler said: ${inspection.logWarnings.join('; ')})` : '';
    for (const m of inspection.modules) {
      if (m.error) throw new StagePlanError(`${stage.label}: CellProfiler rejects ${m.name} (module ${m.num}): ${m.error}`);
    }
    const keys = sample.map((s) => s.key);
    const which = `${keys.slice(0, 4).join(', ')}${keys.length > 4 ? ` and ${keys.length - 4} more` : ''}`;
    if (inspection.prepareRunError) {
      throw new StagePlanError(
        `${stage.label}: CellProfiler makes no image set from the files of image sets ${which}: ${inspection.prepareRunError.split('\n')[0]}${said}; ` +
          `check the pipeline's ${loadData ? 'LoadData columns' : 'Images/NamesAndTypes rules'} against the file names`,
      );
    }
    if (inspection.imageSets.length !== sample.length) {
      throw new StagePlanError(
        `${stage.label}: CellProfiler makes ${inspection.imageSets.length} image sets from the files of the ${sample.length} image sets ${which}${said}; ` +
          `each cpflow image set must be exactly one CellProfiler image set (check NamesAndTypes' rules and matching against the grouping rule)`,
      );
    }
    const folderOf = (url: string): number | undefined => {
      const m = /\/input\/s(\d{5})\//.exec(decodeURIComponent(url));
      return m ? Number(m[1]) : undefined;
    };
    const used = new Set<number>();
    for (const cpSet of inspection.imageSets) {
      const folders = new Set(Object.values(cpSet.urls).map(folderOf).filter((f): f is number => f !== undefined));
      const [only] = folders;
      if (folders.size !== 1 || only === undefined || used.has(only)) {
        throw new StagePlanError(
          `${stage.label}: CellProfiler image set ${cpSet.imageNumber} mixes the files of several cpflow image sets (${Object.values(cpSet.urls).map((u) => path.basename(decodeURIComponent(u))).join(', ')}); check NamesAndTypes' image set matching`,
        );
      }
      used.add(only);
    }

    const warnings = [
      ...inspection.modules.filter((m) => m.warning).map((m) => `${stage.label}: ${m.name} (module ${m.num}): ${m.warning}`),
      ...inspection.logWarnings.map((w) => `${stage.label}: CellProfiler: ${w}`),
    ];
    const aggregation = inspection.modules
      .filter((m) => m.aggregation)
      .map((m) => ({ module: m.name, moduleNum: m.num, kind: 'pools' as const, why: 'CellProfiler reports that it aggregates across the image sets of a group' }));
    return { warnings, aggregation, checkedSets: sample.length };
  } finally {
    await fs.promises.rm(root, { recursive: true, force: true });
  }
}

/** Runs the submit-time CellProfiler check of every stage; returns how it went (for the summary line). */
export async function checkWithCellProfiler(
  stages: PlannedStage[],
  sets: SourceSet[],
  opts: { cellProfilerCheck?: boolean },
  metadataKeys: string[],
  warnings: string[],
): Promise<string> {
  if (opts.cellProfilerCheck === false) return 'not checked with CellProfiler (--no-cellprofiler-check)';
  const executable = configuredCellProfiler();
  const python = executable ? pythonBeside(executable) : undefined;
  if (!python) {
    const note = 'CellProfiler is not installed where submit runs (CPFLOW_CELLPROFILER): the pipelines were not checked against the files';
    warnings.push(note);
    return 'not checked with CellProfiler (not installed here)';
  }
  let checkedSets = 0;
  for (const stage of stages) {
    const sample = sampleFor(stage, sets);
    const upstream = stages.find((s) => stage.inputs[0] && s.name === stage.inputs[0].stage);
    const outcome = await checkStageWithCellProfiler(stage, sample, upstream, { python, pluginsDir: configuredPlugins() });
    // CellProfiler's own list of aggregating modules covers plugins cpflow's list cannot know.
    const known = new Set((stage.info?.pooling ?? []).map((p) => p.moduleNum));
    const extra = outcome.aggregation.filter((a) => !known.has(a.moduleNum));
    if (extra.length > 0) checkGrouping(stage, metadataKeys, extra);
    warnings.push(...outcome.warnings);
    checkedSets += outcome.checkedSets;
  }
  return `checked with CellProfiler on ${checkedSets} image set${checkedSets === 1 ? '' : 's'}`;
}

/** The first group (grouped stage) or the first few image sets, as CellProfiler would get them. */
function sampleFor(stage: PlannedStage, sets: SourceSet[]): CheckSet[] {
  let chosen = sets;
  if (stage.groupBy.length > 0) {
    const first = sets[0];
    chosen = first ? sets.filter((s) => stage.groupBy.every((k) => s.metadata[k] === first.metadata[k])) : [];
    chosen = chosen.slice(0, DEFAULTS.SUBMIT_CHECK_SETS * 8);
  } else {
    chosen = sets.slice(0, DEFAULTS.SUBMIT_CHECK_SETS);
  }
  return chosen.map((s) => ({
    key: s.key,
    metadata: s.metadata,
    files: s.files.map((f) => ({ channel: f.channel, name: path.posix.basename(f.source.name), local: f.source.local })),
  }));
}
