/**
 * Runs activities/profiles/profiles.py with the profiling venv's python: its own process group (so
 * a cancelled activity kills it and any helper it started), progress lines passed on, the one-line
 * JSON summary validated, and failures classified (bad input vs crash).
 */
import path from 'node:path';
import readline from 'node:readline';
import execa from 'execa';
import { z } from 'zod';
import { DEFAULTS, type ProfilesOptions } from '../../core/model';

export const PROFILES_SCRIPT = path.join(__dirname, 'profiles.py');
/** profiles.py's exit status for input it cannot profile (its message says why). */
const INPUT_PROBLEM_EXIT = 3;
const STDERR_TAIL_LINES = 30;

/** The input cannot be profiled (retrying cannot help): e.g. no Well metadata, wells missing from the platemap. */
export class ProfilesInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProfilesInputError';
  }
}

/** profiles.py crashed (exit status, last lines of its stderr). */
export class ProfilesCrash extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProfilesCrash';
  }
}

const separationSchema = z.object({
  treatment: z.string(),
  wells: z.number().int(),
  distance: z.number(),
  nearestWell: z.number(),
  controlSpread: z.number(),
  separates: z.boolean(),
  topFeatures: z.array(z.object({ feature: z.string(), shift: z.number() })),
});
export type Separation = z.infer<typeof separationSchema>;

/** profiles.py's last stdout line. */
export const profilesSummarySchema = z.object({
  cells: z.number().int(),
  wells: z.number().int(),
  plates: z.array(z.string()),
  features: z.object({ aggregated: z.number().int(), selected: z.number().int() }),
  /** Relative to the output directory, e.g. `profiles/well_profiles.csv`. */
  files: z.array(z.string()),
  reportData: z.string(),
  singleCells: z.string(),
  compartments: z.array(z.string()),
  separation: z.array(separationSchema),
  warnings: z.array(z.string()),
  seconds: z.record(z.string(), z.number()),
  versions: z.record(z.string(), z.string()),
  peakRssBytes: z.number().int(),
});
export type ProfilesSummary = z.infer<typeof profilesSummarySchema>;

export interface RunProfilesInput {
  python: string;
  tablesDir: string;
  platemapPath: string;
  outDir: string;
  options: ProfilesOptions;
  /** Threads for DuckDB and CytoTable's Parsl executor. */
  threads: number;
  onProgress?: (line: string) => void;
  signal?: AbortSignal;
  /** Reuse outDir/single_cells.parquet (benchmarks). */
  skipConvert?: boolean;
}

/** What profiles.py is told, beyond the stored options: every tunable comes from DEFAULTS. */
export function scriptOptions(options: ProfilesOptions, threads: number): Record<string, unknown> {
  return {
    controls: options.controls,
    normalization: options.normalization,
    featureSelection: options.featureSelection,
    aggregation: options.aggregation,
    reportFeature: options.reportFeature,
    reportFeatures: DEFAULTS.PROFILES_REPORT_FEATURES,
    cellsPerBatch: DEFAULTS.PROFILES_CELLS_PER_BATCH,
    chunkSize: DEFAULTS.PROFILES_CYTOTABLE_CHUNK_SIZE,
    duckdbMemoryLimit: DEFAULTS.PROFILES_DUCKDB_MEMORY_LIMIT,
    threads,
  };
}

export async function runProfilesScript(input: RunProfilesInput): Promise<ProfilesSummary> {
  const args = [
    PROFILES_SCRIPT,
    '--tables', input.tablesDir,
    '--platemap', input.platemapPath,
    '--out', input.outDir,
    '--options', JSON.stringify(scriptOptions(input.options, input.threads)),
    ...(input.skipConvert ? ['--skip-convert'] : []),
  ];
  const child = execa(input.python, args, {
    detached: true,
    reject: false,
    stdin: 'ignore',
    // Headless matplotlib (pulled in by some dependencies) and no bytecode written into the venv.
    env: { ...process.env, MPLBACKEND: 'Agg', PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' },
  });
  const killGroup = (): void => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  input.signal?.addEventListener('abort', killGroup, { once: true });
  const tail: string[] = [];
  if (child.stderr) {
    readline.createInterface({ input: child.stderr, crlfDelay: Infinity }).on('line', (line) => {
      tail.push(line);
      if (tail.length > STDERR_TAIL_LINES) tail.shift();
      const progress = /^progress: (.*)$/.exec(line);
      if (progress?.[1]) input.onProgress?.(progress[1]);
    });
  }
  try {
    const result = await child;
    if (input.signal?.aborted) throw new Error('profiles step cancelled');
    if (result.exitCode === INPUT_PROBLEM_EXIT) {
      throw new ProfilesInputError(tail.filter((l) => !l.startsWith('progress: ')).pop() ?? 'profiles.py reported bad input');
    }
    if (result.exitCode !== 0) {
      const lastLines = tail.filter((l) => !l.startsWith('progress: ')).slice(-8).join('\n');
      throw new ProfilesCrash(`profiles.py failed (exit ${result.exitCode ?? result.signal ?? 'none'}): ${lastLines}`);
    }
    const last = result.stdout.trim().split('\n').pop() ?? '';
    try {
      return profilesSummarySchema.parse(JSON.parse(last));
    } catch (err) {
      throw new ProfilesCrash(`profiles.py printed no valid summary (${err instanceof Error ? err.message.split('\n')[0] : String(err)}): ${last.slice(0, 200)}`);
    }
  } finally {
    input.signal?.removeEventListener('abort', killGroup);
  }
}
