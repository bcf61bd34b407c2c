/**
 * The demo's profiles part: installs the profiling venv (CytoTable + pycytominer) in parallel with
 * the stack, writes the synthetic platemap (controls and treatments with known effects on the
 * nuclei), and at the end prints which treatments separate from the controls.
 */
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { cytoTableVenv, installCytoTable } from '../deploy/local/cytotable';
import { venvPython } from '../deploy/local/venv';
import { syntheticPlatemap, type SyntheticTreatment } from '../test/fixtures/synthetic-plate';

/** One treatment per plate row; what each should do to the nuclei is known. */
const DEMO_TREATMENTS: readonly (SyntheticTreatment & { expected: string })[] = [
  { name: 'DMSO', control: true, expected: 'the controls' },
  { name: 'enlarge', effect: { size: 1.3 }, expected: 'nuclei 1.3× larger in each axis (area ≈ 1.7×)' },
  { name: 'dim', effect: { brightness: 0.6 }, expected: 'nuclei 0.6× as bright (DNA and the Actin glow)' },
  { name: 'inert', expected: 'no effect' },
];

export interface ProfilesInstall {
  /** For the worker processes: where the venv's python will be once installed. */
  env: { CPFLOW_PROFILES_PYTHON: string };
  ready: Promise<{ ok: true } | { ok: false; reason: string }>;
}

export function startProfilesInstall(cache: string): ProfilesInstall {
  const logDir = path.join(cache, 'logs');
  fs.mkdirSync(logDir, { recursive: true });
  const logFile = path.join(logDir, 'demo-profiles-install.log');
  const log = fs.createWriteStream(logFile, { flags: 'a' });
  const ready = installCytoTable(cache, (line) => log.write(`${line}\n`)).then(
    (installed) => {
      log.end();
      console.log(`profiling tools (CytoTable ${installed.version}, pycytominer) ready in ${installed.seconds.toFixed(0)} s`);
      return { ok: true as const };
    },
    (err: unknown) => {
      log.end();
      return { ok: false as const, reason: `CytoTable/pycytominer could not be installed (${err instanceof Error ? err.message.split('\n')[0] : String(err)}; log: ${logFile})` };
    },
  );
  return { env: { CPFLOW_PROFILES_PYTHON: venvPython(cytoTableVenv(cache)) }, ready };
}

export function demoPlatemap(runDir: string): { file: string; wellEffects: ReturnType<typeof syntheticPlatemap>['wellEffects']; description: string } {
  const { csv, wellEffects } = syntheticPlatemap(4, 4, DEMO_TREATMENTS);
  const file = path.join(runDir, 'platemap.csv');
  fs.writeFileSync(file, csv);
  const description = DEMO_TREATMENTS.map((t, row) => `row ${String.fromCharCode(65 + row)} ${t.name} (${t.expected})`).join(', ');
  return { file, wellEffects, description };
}

const reportDataSchema = z.object({
  separation: z.array(
    z.object({
      treatment: z.string(),
      wells: z.number(),
      distance: z.number(),
      separates: z.boolean(),
      topFeatures: z.array(z.object({ feature: z.string(), shift: z.number() })),
    }),
  ),
});

/** Downloads the profile files and prints which treatment separates from the controls, and how. */
export async function printProfiles(experimentId: number, outDir: string): Promise<void> {
  const { db, experimentResults } = await import('../core/db');
  const { downloadToFile, parseS3Uri } = await import('../core/s3');
  const rows = await experimentResults(await db(), experimentId);
  const profileRows = rows.filter((r) => r.kind === 'profiles' || r.kind === 'profiles-report-data' || r.kind === 'single-cells');
  if (profileRows.length === 0) {
    console.log('profiles: none were made (see `cpflow status` for the error)');
    return;
  }
  const local = new Map<string, string>();
  for (const r of profileRows) {
    const { bucket, key } = parseS3Uri(r.uri);
    const relative = /\/results\/(.+)$/.exec(key)?.[1] ?? path.posix.basename(key);
    const file = path.join(outDir, ...relative.split('/'));
    fs.mkdirSync(path.dirname(file), { recursive: true });
    await downloadToFile(bucket, key, file);
    local.set(relative, file);
  }
  const reportData = local.get('profiles/report-data.json');
  console.log(`single cells:  ${local.get('single_cells.parquet') ?? '(missing)'}`);
  console.log(`well profiles: ${path.join(outDir, 'profiles')} (well_profiles, _normalized, _normalized_feature_select; .parquet and .csv)`);
  if (!reportData) return;
  const { separation } = reportDataSchema.parse(JSON.parse(fs.readFileSync(reportData, 'utf8')));
  console.log('treatments against the DMSO controls (normalised well profiles):');
  for (const s of separation) {
    const expected = DEMO_TREATMENTS.find((t) => t.name === s.treatment)?.expected ?? '';
    const shifts = s.topFeatures.slice(0, 2).map((f) => `${f.feature} ${f.shift >= 0 ? '+' : ''}${f.shift.toFixed(1)}`).join(', ');
    console.log(
      `  ${s.treatment.padEnd(8)} ${s.separates ? 'SEPARATES' : 'does not separate'} (distance ${s.distance.toFixed(2)}; largest shifts: ${shifts})${expected ? `  — made with ${expected}` : ''}`,
    );
  }
  const separating = separation.filter((s) => s.separates).map((s) => s.treatment);
  console.log(`separates from the controls: ${separating.length > 0 ? separating.join(', ') : 'no treatment'}`);
}
