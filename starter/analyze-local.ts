import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { Presets, SingleBar } from 'cli-progress';
import type { GroupingRule } from '../core/model';
import { groupFiles, metadataKeysOf } from '../core/grouping';
import { engineFor, ImageSetInputError } from '../activities/engines';
import { builtinOptionsFromPipeline, setBuiltinThreads } from '../activities/engines/builtin';
import { setCellProfilerWarmProcesses } from '../activities/engines/cellprofiler';
import { parseCppipe } from '../core/pipeline/cppipe';
import { validatePipelineForCpflow } from '../core/pipeline/validate';
import { describePooling } from '../core/pipeline/pooling';
import { UsageError } from '../core/errors';
import { mergeImageSetTables, type ImageSetResult } from '../activities/reduce/summary';

/**
 * `cpflow analyze-local`: the same engines over a local folder, no services. It is the laptop path
 * and the benchmark's baseline for cpflow's orchestration overhead.
 */

export interface AnalyzeLocalOptions {
  folder: string;
  grouping: GroupingRule;
  pipelineFile?: string;
  outDir: string;
  engine: 'builtin' | 'cellprofiler';
  jobs: number;
  progress?: boolean;
}

export interface AnalyzeLocalResult {
  done: number;
  failed: number;
  seconds: number;
  summaryPath: string;
  failures: Array<{ key: string; error: string }>;
}

export async function analyzeLocal(o: AnalyzeLocalOptions): Promise<AnalyzeLocalResult> {
  const started = process.hrtime.bigint();
  const root = path.resolve(o.folder);
  if (!fs.existsSync(root)) throw new Error(`${o.folder}: no such directory`);
  const files = fs.readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((f) => fs.statSync(path.join(root, f)).isFile());
  let required: string[] | undefined;
  let pipelineOptions = {};
  if (o.pipelineFile) {
    const text = fs.readFileSync(o.pipelineFile, 'utf8');
    const info = validatePipelineForCpflow(parseCppipe(text, o.pipelineFile));
    const pooled = info.pooling.find((f) => f.kind === 'pools');
    if (pooled) {
      // analyze-local runs image set by image set: a pooling pipeline would compute other numbers.
      throw new UsageError(`${o.pipelineFile}: ${describePooling(pooled)}; analyze-local runs image set by image set: use \`cpflow submit --group-by …\``);
    }
    required = info.channels;
    if (o.engine === 'builtin') pipelineOptions = builtinOptionsFromPipeline(text);
  }
  const grouped = groupFiles(files, (f) => f, o.grouping, required);
  // The builtin engine's worker threads: one per job, as the cellprofiler pool has one per slot.
  if (o.engine === 'builtin') setBuiltinThreads(o.jobs);
  // Warm CellProfilers: one per job, as the cellprofiler pool has one per slot.
  else setCellProfilerWarmProcesses(o.jobs);
  const engine = engineFor({ engine: o.engine, ...pipelineOptions });
  const setsDir = path.join(o.outDir, 'sets');
  fs.mkdirSync(setsDir, { recursive: true });

  const bar = o.progress ? new SingleBar({ format: 'analysing {bar} {value}/{total} image sets' }, Presets.shades_classic) : undefined;
  bar?.start(grouped.sets.length, 0);
  const outcome = new Map<string, { error?: string; files: string[] }>();
  const runSet = async (set: (typeof grouped.sets)[number]): Promise<void> => {
    const attemptDir = fs.mkdtempSync(path.join(o.outDir, '.attempt-'));
    try {
      const r = await engine.run({
        imageSets: [{ key: set.key, metadata: set.metadata, files: set.files.map((f) => ({ channel: f.channel, path: path.join(root, f.file) })) }],
        pipelinePath: o.pipelineFile,
        outDir: attemptDir,
        tmpDir: attemptDir,
      });
      const dest = path.join(setsDir, set.key);
      fs.rmSync(dest, { recursive: true, force: true });
      fs.renameSync(path.join(attemptDir, set.key), dest);
      outcome.set(set.key, { files: r.sets[0]?.files ?? [] });
    } catch (err) {
      if (!(err instanceof ImageSetInputError)) throw err;
      outcome.set(set.key, { error: err.message, files: [] });
    } finally {
      fs.rmSync(attemptDir, { recursive: true, force: true });
      bar?.increment();
    }
  };
  await Readable.from(grouped.sets).map(runSet, { concurrency: o.jobs }).toArray();
  bar?.stop();

  const summaryPath = path.join(o.outDir, 'summary.csv');
  const metadataKeys = metadataKeysOf(o.grouping);
  const results: ImageSetResult[] = grouped.sets.map((set) => {
    const r = outcome.get(set.key);
    return {
      key: set.key,
      status: r && !r.error ? 'done' : 'failed',
      metadata: set.metadata,
      error: r?.error,
      tables: (r?.files ?? [])
        .filter((f) => f.endsWith('.csv'))
        .map((f) => ({ name: f, open: async () => fs.createReadStream(path.join(setsDir, set.key, f)) })),
    };
  });
  const stats = await mergeImageSetTables(results, { out: fs.createWriteStream(summaryPath), metadataKeys });
  return {
    done: stats.setsDone,
    failed: stats.setsFailed,
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
    summaryPath,
    failures: stats.failures,
  };
}
