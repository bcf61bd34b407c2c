import path from 'node:path';
import execa from 'execa';
import { z } from 'zod';
import { cytoTablePython, installCytoTable } from '../../deploy/local/cytotable';
import { cacheDir } from '../../deploy/local/services';
import { REPO_ROOT } from './processes';

/**
 * Bench section (vi): the profiles step's memory at scale. Runs test/bench/profiles-run.ts (its own
 * process) over `sets` synthetic image sets and reports the peak RSS of its two sides: the Node
 * gather (per-set tables → one CSV per table) and profiles.py (CytoTable + pycytominer).
 */

export const profilesRunSchema = z.object({
  sets: z.number().int(),
  cells: z.number().int(),
  wells: z.number().int(),
  plates: z.number().int(),
  gatherSeconds: z.number(),
  gatherPeakRssBytes: z.number(),
  tablesBytes: z.number(),
  pythonSeconds: z.number(),
  pythonPeakRssBytes: z.number(),
  singleCellsBytes: z.number(),
  steps: z.record(z.string(), z.number()),
  features: z.object({ aggregated: z.number(), selected: z.number() }),
});
export type ProfilesRun = z.infer<typeof profilesRunSchema>;

export async function profilesBench(sets: number, log: (line: string) => void): Promise<ProfilesRun | { skipped: string }> {
  let python = cytoTablePython(cacheDir());
  if (!python) {
    try {
      log('installing the profiling venv (CytoTable, pycytominer) …');
      python = (await installCytoTable(cacheDir(), log)).python;
    } catch (err) {
      return { skipped: `profiling venv could not be installed: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}` };
    }
  }
  log(`(vi) profiles step over ${sets.toLocaleString('en')} synthetic image sets …`);
  const run = await execa(process.execPath, [require.resolve('tsx/cli'), path.join(REPO_ROOT, 'test', 'bench', 'profiles-run.ts'), '--sets', String(sets), '--python', python], {
    cwd: REPO_ROOT,
    reject: false,
    stdin: 'ignore',
  });
  if (run.exitCode !== 0) throw new Error(`profiles-run.ts failed (exit ${run.exitCode}): ${run.stderr.split('\n').slice(-10).join('\n')}`);
  return profilesRunSchema.parse(JSON.parse(run.stdout.trim().split('\n').pop() ?? ''));
}
