import { Option, type Command } from 'commander';
import { resolveGroupingRule } from '../../core/grouping';
import { DEFAULTS } from '../../core/model';
import { analyzeLocal } from '../analyze-local';
import { intArg, print } from './common';

/** `cpflow analyze-local`: the engines over local files, no services. */
export function registerAnalyzeLocal(program: Command): void {
  program
    .command('analyze-local <folder>')
    .description('run the engine over local files with no services (laptop path and benchmark baseline)')
    .requiredOption('--grouping <rule>', 'grouping preset, regex or JSON rule')
    .option('--pipeline <file>', 'CellProfiler pipeline (.cppipe)')
    .option('--out <dir>', 'output folder', 'cpflow-local-out')
    .addOption(new Option('--engine <engine>').choices(['builtin', 'cellprofiler']).default('builtin'))
    .option('-j, --jobs <n>', 'image sets analysed at once', intArg('--jobs'), DEFAULTS.LOCAL_JOBS)
    .option('--json', 'machine-readable output', false)
    .action(
      async (folder: string, o: { grouping: string; pipeline?: string; out: string; engine: 'builtin' | 'cellprofiler'; jobs: number; json: boolean }) => {
        const r = await analyzeLocal({
          folder,
          grouping: resolveGroupingRule(o.grouping),
          pipelineFile: o.pipeline,
          outDir: o.out,
          engine: o.engine,
          jobs: o.jobs,
          progress: !o.json && process.stderr.isTTY,
        });
        print(o.json, r, () => `${r.done} image sets done, ${r.failed} failed in ${r.seconds.toFixed(1)} s; summary: ${r.summaryPath}`);
      },
    );
}
