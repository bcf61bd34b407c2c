/**
 * Bench section (vi), run as a process of its own so its memory is its own:
 *   npx tsx test/bench/profiles-run.ts --sets 100000 --python <venv python> [--cells 30] [--dir D]
 *
 * The profiles step at scale, without the stack: `sets` image sets of builtin-engine tables
 * (Image.csv + Nuclei.csv, `cells` nuclei each, 384-well plates of 9 sites, values drawn from a seeded
 * generator) go through the step's own code: gatherTables (the Node side: per-set tables → one CSV
 * per table, 8 sets in flight, as from S3) and profiles.py (CytoTable + pycytominer). Reports the
 * peak RSS of each side (Node sampled every 100 ms; Python's ru_maxrss) and the timings as one
 * JSON line. S3 transfer is not part of it (section iv measures reads of per-set tables).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { gatherTables, type GatherSet } from '../../activities/profiles/gather';
import { runProfilesScript } from '../../activities/profiles/run';
import { profilesOptionsSchema } from '../../core/model';
import { seededRandom } from '../../core/random';

const program = new Command('profiles-run')
  .requiredOption('--sets <n>', 'image sets', (v) => Number(v))
  .requiredOption('--python <path>', 'the profiling venv python')
  .option('--cells <n>', 'nuclei per image set', (v) => Number(v), 30)
  .option('--dir <dir>', 'scratch directory (removed afterwards)')
  .parse(process.argv);
const o = program.opts<{ sets: number; python: string; cells: number; dir?: string }>();

const WELLS_PER_PLATE = 384;
const SITES = 9;
const CHANNELS = ['Actin', 'DNA'];
const NUCLEI_COLUMNS = [
  'ImageNumber', 'ObjectNumber', 'AreaShape_Area', 'AreaShape_BoundingBoxMaximum_X', 'AreaShape_BoundingBoxMaximum_Y',
  'AreaShape_BoundingBoxMinimum_X', 'AreaShape_BoundingBoxMinimum_Y', 'AreaShape_Center_X', 'AreaShape_Center_Y', 'AreaShape_EquivalentDiameter',
  ...CHANNELS.flatMap((c) => [`Intensity_IntegratedIntensity_${c}`, `Intensity_MaxIntensity_${c}`, `Intensity_MeanIntensity_${c}`]),
  'Location_Center_X', 'Location_Center_Y',
];

function wellName(index: number): string {
  return `${String.fromCharCode(65 + Math.floor(index / 24))}${String((index % 24) + 1).padStart(2, '0')}`;
}

function* syntheticSets(count: number, cells: number): Generator<GatherSet> {
  const random = seededRandom(12);
  for (let i = 0; i < count; i++) {
    const id = i + 1;
    const plate = `P${Math.floor(i / (WELLS_PER_PLATE * SITES)) + 1}`;
    const well = wellName(Math.floor(i / SITES) % WELLS_PER_PLATE);
    const site = String(i % SITES);
    const key = `${plate}-${well}-s${site}`;
    const image = `ImageNumber,Count_Nuclei,FileName_DNA,Metadata_Plate,Metadata_Site,Metadata_Well,PathName_DNA\n${id},${cells},${key}_DNA.tif,${plate},${site},${well},/work/${key}\n`;
    const lines = [NUCLEI_COLUMNS.join(',')];
    for (let n = 1; n <= cells; n++) {
      const area = Math.round(150 + 120 * random());
      const x = 20 + 200 * random();
      const y = 20 + 200 * random();
      const mean = 0.2 + 0.4 * random();
      const actin = 0.05 + 0.1 * random();
      lines.push(
        [id, n, area, Math.round(x + 8), Math.round(y + 8), Math.round(x - 8), Math.round(y - 8), x.toFixed(3), y.toFixed(3), Math.sqrt((4 * area) / Math.PI).toFixed(4),
          (actin * area).toFixed(4), (actin * 1.5).toFixed(5), actin.toFixed(5), (mean * area).toFixed(4), (mean * 1.4).toFixed(5), mean.toFixed(5), x.toFixed(3), y.toFixed(3)].join(','),
      );
    }
    const nuclei = `${lines.join('\n')}\n`;
    yield {
      key,
      metadata: { Plate: plate, Well: well, Site: site },
      tables: [
        { name: 'Image.csv', read: async () => Buffer.from(image) },
        { name: 'Nuclei.csv', read: async () => Buffer.from(nuclei) },
      ],
    };
  }
}

async function main(): Promise<void> {
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-bench-profiles-'));
  let peak = process.memoryUsage().rss;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 100);
  try {
    const started = Date.now();
    const gathered = await gatherTables(syntheticSets(o.sets, o.cells), path.join(dir, 'tables'), { concurrency: 8 });
    const gatherSeconds = (Date.now() - started) / 1000;
    const gatherPeakRss = Math.max(peak, process.memoryUsage().rss);

    // Columns 1 and 24 are the controls, the rest two treatments: the platemap layout of a screen.
    const platemap = ['well_position,treatment,control_type'];
    for (let w = 0; w < WELLS_PER_PLATE; w++) {
      const column = (w % 24) + 1;
      platemap.push(`${wellName(w)},${column === 1 || column === 24 ? 'DMSO,negcon' : column % 2 ? 'drugA,' : 'drugB,'}`);
    }
    const platemapPath = path.join(dir, 'platemap.csv');
    fs.writeFileSync(platemapPath, `${platemap.join('\n')}\n`);
    const options = profilesOptionsSchema.parse({
      platemap: { uri: 's3://bench/platemap.csv', sha256: '0'.repeat(64), fileName: 'platemap.csv' },
      controls: { column: 'control_type', value: 'negcon' },
    });
    const pythonStarted = Date.now();
    const summary = await runProfilesScript({ python: o.python, tablesDir: path.join(dir, 'tables'), platemapPath, outDir: path.join(dir, 'out'), options, threads: 2 });
    const outputBytes = fs.statSync(path.join(dir, 'out', summary.singleCells)).size;
    process.stdout.write(
      `${JSON.stringify({
        sets: gathered.sets,
        cells: summary.cells,
        wells: summary.wells,
        plates: summary.plates.length,
        gatherSeconds,
        gatherPeakRssBytes: gatherPeakRss,
        tablesBytes: fs.readdirSync(path.join(dir, 'tables')).reduce((sum, f) => sum + fs.statSync(path.join(dir, 'tables', f)).size, 0),
        pythonSeconds: (Date.now() - pythonStarted) / 1000,
        pythonPeakRssBytes: summary.peakRssBytes,
        singleCellsBytes: outputBytes,
        steps: summary.seconds,
        features: summary.features,
      })}\n`,
    );
  } finally {
    clearInterval(sampler);
    if (!o.dir) fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
