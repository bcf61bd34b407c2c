/**
 * From images to profiles in one experiment, on the real stack: a synthetic plate whose platemap has
 * control wells (DMSO) and two treatments with known effects (`enlarge`: nuclei 1.3× larger in each
 * axis; `dim`: 0.6× as bright) is submitted with `--platemap`, analysed by the builtin engine, and
 * gets single-cell Parquet and well profiles from the profiles step (CytoTable + pycytominer).
 *
 * Checked: the profiles equal pycytominer run by hand on CytoTable's output of the same per-set
 * folders (test/support/profiles_by_hand.py: same rows, values within floating-point tolerance);
 * treated wells move in the known direction against the controls; the report's profiles section is
 * drawn (screenshot); provenance names the tools and the platemap's sha256; `cpflow results`
 * lists and downloads the files; a re-run writes the same bytes; and bad platemaps are refused at
 * submit with exit 2, one line, nothing registered.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { parse } from 'csv-parse/sync';
import execa from 'execa';
import { computeProfiles } from '../../activities/profiles';
import { findChromium, screenshotReport } from '../../activities/reduce/screenshot';
import { db, findExperimentByName, getExperiment } from '../../core/db';
import type { ProfilesOutput } from '../../core/model';
import { downloadToFile, getBytes, layout, parseS3Uri } from '../../core/s3';
import { generateSyntheticPlate, syntheticPlatemap, type GroundTruth } from '../fixtures/synthetic-plate';
import {
  REPO_ROOT,
  requireStack,
  runCli,
  s3Keys,
  startWatcher,
  startWorkers,
  tempDir,
  teardown,
  uniqueName,
  waitForExperiment,
  type ManagedProcess,
} from '../support/harness';

jest.setTimeout(600_000);

const python = process.env.CPFLOW_PROFILES_PYTHON;
const skipReason =
  python && fs.existsSync(python)
    ? undefined
    : `the profiling venv is not installed (${process.env.CPFLOW_CYTOTABLE_UNAVAILABLE ?? 'CPFLOW_PROFILES_PYTHON unset; CPFLOW_SKIP_CYTOTABLE=1?'})`;
if (skipReason) console.warn(`SKIPPED profiles integration tests: ${skipReason}`);
const describeWithTools = skipReason ? describe.skip : describe;

type Row = Record<string, string>;
const readCsv = (file: string): Row[] => parse(fs.readFileSync(file), { columns: true, skip_empty_lines: true }) as Row[];
const wellKey = (r: Row): string => `${r.Metadata_Plate}/${r.Metadata_Well}`;

/** Same rows (by plate and well), same columns, numbers equal within floating-point tolerance. */
function expectSameProfiles(actual: Row[], expected: Row[], label: string): void {
  expect({ label, wells: actual.map(wellKey).sort() }).toEqual({ label, wells: expected.map(wellKey).sort() });
  expect({ label, columns: Object.keys(actual[0] ?? {}).sort() }).toEqual({ label, columns: Object.keys(expected[0] ?? {}).sort() });
  const byWell = new Map(expected.map((r) => [wellKey(r), r]));
  const mismatches: string[] = [];
  for (const row of actual) {
    const other = byWell.get(wellKey(row))!;
    for (const [column, value] of Object.entries(row)) {
      const a = Number(value);
      const b = Number(other[column]);
      const same = value === other[column] || (value !== '' && Number.isFinite(a) && Number.isFinite(b) && Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b)));
      if (!same) mismatches.push(`${label} ${wellKey(row)} ${column}: ${value} vs ${other[column]}`);
    }
  }
  expect(mismatches).toEqual([]);
}

const CONTROLS = 'DMSO';
const TREATMENTS = [
  { name: CONTROLS, control: true },
  { name: 'enlarge', effect: { size: 1.3 } },
  { name: 'dim', effect: { brightness: 0.6 } },
];

let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
const project = uniqueName('profiles');

describeWithTools('a plate with a platemap, from images to profiles', () => {
  let dir: string;
  let plateDir: string;
  let platemapFile: string;
  let truth: GroundTruth;
  let experimentId: number;
  const downloaded = () => path.join(dir, 'results');

  beforeAll(async () => {
    requireStack();
    dir = tempDir('profiles');
    plateDir = path.join(dir, 'plate');
    const platemap = syntheticPlatemap(3, 4, TREATMENTS);
    truth = await generateSyntheticPlate({ outDir: plateDir, plate: 'P1', rows: 3, cols: 4, sites: 1, seed: 11, wellEffects: platemap.wellEffects });
    fs.rmSync(path.join(plateDir, 'ground-truth.json'));
    platemapFile = path.join(dir, 'platemap.csv');
    fs.writeFileSync(platemapFile, platemap.csv);
    [workers, watcher] = await Promise.all([startWorkers(), startWatcher()]);

    const submitted = await runCli(['submit', '--project', project, '--name', 'plate-1', '--folder', plateDir, '--grouping', 'synthetic', '--engine', 'builtin', '--platemap', platemapFile, '--json']);
    expect(submitted.stderr).toBe('');
    expect(submitted.code).toBe(0);
    const result = JSON.parse(submitted.stdout) as { experimentId: number; imageSets: number; platemap: string };
    expect(result.imageSets).toBe(12);
    expect(result.platemap).toBe('platemap platemap.csv: 12 wells, 4 control wells (control_type=negcon), normalisation standardize');
    experimentId = result.experimentId;
  });

  afterAll(async () => {
    await teardown(workers, watcher);
  });

  it('ends done, with single-cell Parquet and the profile files recorded and downloadable', async () => {
    const e = await waitForExperiment(experimentId);
    expect({ status: e.status, error: e.error }).toEqual({ status: 'done', error: null });
    const results = await runCli(['results', String(experimentId), '--download', downloaded(), '--json']);
    expect(results.code).toBe(0);
    const listed = JSON.parse(results.stdout) as { results: { kind: string; uri: string }[] };
    const prefix = `s3://${e.bucket}/${layout.results(experimentId, '')}`;
    const files = listed.results.map((r) => `${r.kind} ${r.uri.slice(prefix.length)}`).sort();
    expect(files).toEqual(
      [
        'experiment-provenance provenance.json',
        'profiles profiles/well_profiles.csv',
        'profiles profiles/well_profiles.parquet',
        'profiles profiles/well_profiles_normalized.csv',
        'profiles profiles/well_profiles_normalized.parquet',
        'profiles profiles/well_profiles_normalized_feature_select.csv',
        'profiles profiles/well_profiles_normalized_feature_select.parquet',
        'profiles-provenance profiles/provenance.json',
        'profiles-report-data profiles/report-data.json',
        'report report.html',
        'single-cells single_cells.parquet',
        'summary summary.csv',
      ].sort(),
    );
    for (const f of ['single_cells.parquet', 'profiles/well_profiles.csv', 'profiles/well_profiles_normalized_feature_select.parquet', 'report.html']) {
      expect(fs.statSync(path.join(downloaded(), f)).size).toBeGreaterThan(100);
    }
    // One row per well, with the platemap's annotation and every cell counted.
    const profiles = readCsv(path.join(downloaded(), 'profiles', 'well_profiles.csv'));
    expect(profiles.map((r) => `${r.Metadata_Well} ${r.Metadata_treatment}`)).toEqual(
      truth.sets.map((s) => `${s.well} ${TREATMENTS[s.well.charCodeAt(0) - 65]!.name}`),
    );
    const summary = readCsv(path.join(downloaded(), 'summary.csv'));
    for (const row of profiles) {
      expect(Number(row.Metadata_Object_Count)).toBe(Number(summary.find((s) => s.Metadata_Well === row.Metadata_Well)?.Count_Nuclei));
    }
  });

  it('equals pycytominer run by hand on CytoTable’s output of the same per-set folders', async () => {
    const e = await waitForExperiment(experimentId);
    const setsDir = path.join(dir, 'sets');
    for (const key of await s3Keys(`s3://${e.bucket}/${layout.experimentRoot(experimentId)}sets/`)) {
      if (!key.endsWith('.csv')) continue;
      const local = path.join(setsDir, key.slice(`${layout.experimentRoot(experimentId)}sets/`.length));
      fs.mkdirSync(path.dirname(local), { recursive: true });
      await downloadToFile(e.bucket, key, local);
    }
    expect(fs.readdirSync(setsDir)).toHaveLength(12);
    const byHand = path.join(dir, 'by-hand');
    const run = await execa(python!, [path.join(REPO_ROOT, 'test', 'support', 'profiles_by_hand.py'), setsDir, platemapFile, byHand, 'control_type', 'negcon'], { reject: false, all: true });
    if (run.exitCode !== 0) throw new Error(`profiles_by_hand.py failed: ${run.all?.split('\n').slice(-15).join('\n')}`);
    const handSummary = JSON.parse(run.stdout.trim().split('\n').pop() ?? '{}') as { cells: number; wells: number };
    expect(handSummary.wells).toBe(12);
    expect(handSummary.cells).toBe(truth.sets.reduce((sum, s) => sum + Number(readCsv(path.join(setsDir, s.key, 'Nuclei.csv')).length), 0));
    for (const stem of ['well_profiles', 'well_profiles_normalized', 'well_profiles_normalized_feature_select']) {
      expectSameProfiles(readCsv(path.join(downloaded(), 'profiles', `${stem}.csv`)), readCsv(path.join(byHand, `${stem}.csv`)), stem);
    }
  });

  it('moves treated wells in the known direction against the controls', () => {
    const normalized = readCsv(path.join(downloaded(), 'profiles', 'well_profiles_normalized.csv'));
    const values = (treatment: string, feature: string): number[] => normalized.filter((r) => r.Metadata_treatment === treatment).map((r) => Number(r[feature]));
    const area = 'Nuclei_AreaShape_Area';
    const dna = 'Nuclei_Intensity_MeanIntensity_DNA';
    // Standardised against the controls: they centre on 0 with unit spread.
    expect(Math.abs(values(CONTROLS, area).reduce((a, b) => a + b, 0))).toBeLessThan(1e-9);
    // Larger nuclei: every enlarge well above every control well; dimmer nuclei: every dim well below.
    expect(Math.min(...values('enlarge', area))).toBeGreaterThan(Math.max(...values(CONTROLS, area)));
    expect(Math.max(...values('dim', dna))).toBeLessThan(Math.min(...values(CONTROLS, dna)));
    // And the other feature stays near the controls (within a few control SDs).
    expect(Math.max(...values('dim', area).map(Math.abs))).toBeLessThan(3);

    const report = JSON.parse(fs.readFileSync(path.join(downloaded(), 'profiles', 'report-data.json'), 'utf8')) as {
      separation: { treatment: string; separates: boolean }[];
    };
    expect(report.separation.map((s) => [s.treatment, s.separates]).sort()).toEqual([
      ['dim', true],
      ['enlarge', true],
    ]);
  });

  it('records CytoTable, pycytominer and the platemap’s sha256 in provenance', () => {
    const provenance = JSON.parse(fs.readFileSync(path.join(downloaded(), 'provenance.json'), 'utf8')) as {
      profiles: { cytotable: string; pycytominer: string; platemap: { sha256: string; fileName: string } };
    };
    expect(provenance.profiles).toMatchObject({
      cytotable: '1.2.6',
      pycytominer: '1.7.1',
      platemap: { sha256: createHash('sha256').update(fs.readFileSync(platemapFile)).digest('hex'), fileName: 'platemap.csv' },
    });
  });

  (findChromium() ? it : it.skip)('draws the profiles section in the report (screenshot)', async () => {
    const html = path.join(downloaded(), 'report.html');
    expect(fs.readFileSync(html, 'utf8')).toContain('<section id="profiles">');
    const png = path.join(dir, 'report.png');
    const shot = await screenshotReport(html, png);
    expect(shot.externalRequests).toEqual([]);
    // Counts, plate, area and two intensity histograms, plus the profile heatmap and the PCA scatter.
    expect(shot.plots).toBe(7);
    expect(fs.statSync(png).size).toBeGreaterThan(100_000);
    console.log(`profiles report screenshot: ${png}`);
  });

  it('writes the same bytes when the profiles step runs again', async () => {
    const e = (await getExperiment(await db(), experimentId))!;
    const keys = (await s3Keys(`s3://${e.bucket}/${layout.results(experimentId, '')}`)).filter((k) => /single_cells|profiles\/(well_profiles|report-data)/.test(k));
    expect(keys).toHaveLength(8);
    const before = await Promise.all(keys.map((k) => getBytes(e.bucket, k)));
    const output: ProfilesOutput = await new MockActivityEnvironment().run(computeProfiles, { experimentId, workflowId: 'profiles-rerun' });
    expect(output.wells).toBe(12);
    const after = await Promise.all(keys.map((k) => getBytes(e.bucket, k)));
    keys.forEach((key, i) => expect({ key, same: before[i]!.equals(after[i]!) }).toEqual({ key, same: true }));
    const { bucket } = parseS3Uri(output.singleCellsUri);
    expect(bucket).toBe(e.bucket);
  });

  it('without the tools on the reduce worker: summary and report, experiment failed with the reason; retry makes the profiles', async () => {
    // Workers whose reduce pool lacks the profiling venv.
    await workers?.stop('SIGTERM');
    workers = await startWorkers({ CPFLOW_PROFILES_PYTHON: path.join(dir, 'no-such-venv', 'bin', 'python') });
    const submitted = await runCli(['submit', '--project', project, '--name', 'plate-no-tools', '--folder', plateDir, '--grouping', 'synthetic', '--engine', 'builtin', '--platemap', platemapFile, '--json']);
    expect(submitted.code).toBe(0);
    const id = (JSON.parse(submitted.stdout) as { experimentId: number }).experimentId;
    const failed = await waitForExperiment(id);
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatch(/^profiles: no profiling tools on reduce worker .*CPFLOW_PROFILES_PYTHON \(.*no-such-venv.*\) does not exist/);
    expect(failed.done_sets).toBe(12);
    const { bucket, key } = parseS3Uri(failed.report_uri!);
    expect((await getBytes(bucket, key)).toString('utf8')).toContain('No profiles: no profiling tools on reduce worker');
    expect(failed.summary_uri).toBeTruthy();

    await workers?.stop('SIGTERM');
    workers = await startWorkers();
    const retried = await runCli(['retry', String(id)]);
    expect({ code: retried.code, stdout: retried.stdout.trim() }).toEqual({ code: 0, stdout: `experiment ${id}: its profiles step and reduce run again` });
    // retry set the experiment back to submitted before it returned: the next terminal state is the new run's.
    const done = await waitForExperiment(id);
    expect({ status: done.status, error: done.error }).toEqual({ status: 'done', error: null });
    expect((await s3Keys(`s3://${done.bucket}/${layout.results(id, 'profiles/')}`)).length).toBe(8);
  });

  describe('bad platemaps are refused at submit: exit 2, one line, nothing registered', () => {
    const wells = () => Array.from({ length: 12 }, (_, i) => `${'ABC'[Math.floor(i / 4)]}${String((i % 4) + 1).padStart(2, '0')}`);
    const cases: Array<[string, () => string, string[], RegExp]> = [
      ['unknown wells', () => `well_position,treatment\n${wells().slice(0, 10).map((w) => `${w},x`).join('\n')}\n`, [], /has no entry for wells C03, C04 of the experiment \(2 of 12\)$/],
      ['duplicate wells', () => `well_position,treatment\n${[...wells(), 'B02'].map((w) => `${w},x`).join('\n')}\n`, [], /well B02 is listed twice \(lines 7 and 14\)$/],
      ['a platemap covering none of the wells', () => 'well_position,treatment\nH01,x\nH02,y\n', [], /covers none of the experiment's 12 wells/],
      [
        'a control label that matches no well',
        () => `well_position,treatment,control_type\n${wells().map((w) => `${w},x,`).join('\n')}\n`,
        ['--controls', 'treatment=DMSO'],
        /control label treatment=DMSO matches none of the experiment's wells \(treatment there: x\)/,
      ],
    ];
    it.each(cases)('%s', async (label, text, extra, message) => {
      const file = path.join(dir, `${label.replace(/\W+/g, '-')}.csv`);
      fs.writeFileSync(file, text());
      const name = uniqueName('bad');
      const r = await runCli(['submit', '--project', project, '--name', name, '--folder', plateDir, '--grouping', 'synthetic', '--engine', 'builtin', '--platemap', file, ...extra]);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr.trim()).toMatch(new RegExp(`^cpflow: --platemap ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `));
      expect(r.stderr.trim()).toMatch(message);
      expect(await findExperimentByName(await db(), project, name)).toBeUndefined();
      const e = (await getExperiment(await db(), experimentId))!;
      expect(await s3Keys(`s3://${e.bucket}/inputs/${name}/`)).toEqual([]);
    });
  });
});
