import fs from 'node:fs';
import path from 'node:path';
import execa from 'execa';
import type { Client } from '@temporalio/client';
import { headlessEnv } from '../../core/cellprofiler';
import { GROUPING_PRESETS } from '../../core/grouping';
import { submit } from '../../starter/submit';
import { EXAMPLE_HUMAN } from '../support/fixtures';
import { runExperiment, type ExperimentTiming } from './experiment-run';
import { BENCH_PROJECT } from './fixtures';
import { scratchDir } from './processes';
import { withWorkers, type PoolReport } from './workers';

/**
 * (vi) The CellProfiler overhead ratio: cpflow's wall time (start → summary.csv) over CellProfiler run
 * directly on the same files with the same number of processes, on ExampleHuman replicated to `sets`
 * image sets. "Directly" is what a lab does by hand: the image sets split into `processes` contiguous
 * ranges, one `cellprofiler -c -r -p … -f first -l last` per range, all at once, over a file list.
 */

export interface CellProfilerOverheadResult {
  skipped?: string;
  sets?: number;
  processes?: number;
  directSeconds?: number;
  cpflow?: ExperimentTiming;
  ratio?: number;
  pools?: PoolReport[];
  cpu?: Array<{ name: string; cpuSeconds: number }>;
}

const CHANNEL_SUFFIXES = ['d0', 'd1', 'd2'];

/** ExampleHuman's one image set copied under `sets` well names (D03…), so each copy is its own image set. */
function replicate(folder: string, sets: number): string[] {
  fs.mkdirSync(folder, { recursive: true });
  const wells: string[] = [];
  for (let i = 0; wells.length < sets; i++) wells.push(`${'ABCDEFGHIJKLMNOP'[Math.floor(i / 24)]}${String((i % 24) + 1).padStart(2, '0')}`);
  const files: string[] = [];
  for (const well of wells) {
    for (const suffix of CHANNEL_SUFFIXES) {
      const target = path.join(folder, `AS_09125_050116030001_${well}f00${suffix}.tif`);
      fs.copyFileSync(path.join(EXAMPLE_HUMAN, 'images', `AS_09125_050116030001_D03f00${suffix}.tif`), target);
      files.push(target);
    }
  }
  return files;
}

export async function cellProfilerOverhead(client: Client, o: { sets: number; processes: number }, log: (line: string) => void): Promise<CellProfilerOverheadResult> {
  const exe = process.env.CPFLOW_CELLPROFILER;
  if (!exe || !fs.existsSync(exe)) return { skipped: 'skipped: CellProfiler not installed' };
  const pipeline = path.join(EXAMPLE_HUMAN, 'ExampleHuman.cppipe');
  const rule = GROUPING_PRESETS.examplehuman?.rule;
  if (!rule) throw new Error('grouping preset "examplehuman" is missing');
  const work = scratchDir('cp-overhead');
  try {
    const folder = path.join(work, 'images');
    const files = replicate(folder, o.sets);
    const list = path.join(work, 'files.txt');
    fs.writeFileSync(list, `${files.join('\n')}\n`);

    // CellProfiler directly: `processes` invocations over contiguous ranges of the image sets, at once.
    log(`(vi) CellProfiler directly: ${o.sets} ExampleHuman sets, ${o.processes} processes …`);
    const per = Math.ceil(o.sets / o.processes);
    const t0 = Date.now();
    await Promise.all(
      Array.from({ length: o.processes }, async (_, k) => {
        const first = k * per + 1;
        const last = Math.min(o.sets, (k + 1) * per);
        if (first > last) return;
        const out = path.join(work, `direct-${k}`);
        fs.mkdirSync(out, { recursive: true });
        const r = await execa(exe, ['-c', '-r', '-p', pipeline, '--file-list', list, '-o', out, '-f', String(first), '-l', String(last), '-e', 'imageio_reader'], {
          env: headlessEnv(),
          reject: false,
          all: true,
        });
        if (r.exitCode !== 0) throw new Error(`cellprofiler (sets ${first}-${last}) exited ${r.exitCode}:\n${(r.all ?? '').slice(-2000)}`);
      }),
    );
    const directSeconds = (Date.now() - t0) / 1000;
    log(`  CellProfiler directly: ${directSeconds.toFixed(1)} s`);

    log(`(vi) cpflow: the same ${o.sets} sets, CPFLOW_ANALYZE_SLOTS=${o.processes} …`);
    const submitted = await submit({
      project: BENCH_PROJECT,
      name: `cp-overhead-${new Date().toISOString().replace(/[:.]/g, '-')}`,
      folder,
      grouping: rule,
      engine: 'cellprofiler',
      pipelineFile: pipeline,
    });
    const run = await withWorkers(client, { cellprofiler: { CPFLOW_ANALYZE_SLOTS: String(o.processes) } }, () =>
      runExperiment(client, submitted.experimentId, { timeoutMs: 3_600_000, label: 'cellprofiler overhead', log }),
    );
    if (run.result.done !== o.sets) throw new Error(`cpflow analysed ${run.result.done} of ${o.sets} ExampleHuman sets (${run.result.status})`);
    log(`  cpflow: ${run.result.endToEndSeconds.toFixed(1)} s`);
    return {
      sets: o.sets,
      processes: o.processes,
      directSeconds,
      cpflow: run.result,
      ratio: run.result.endToEndSeconds / directSeconds,
      pools: run.pools,
      cpu: run.cpu,
    };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
