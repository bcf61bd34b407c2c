import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'csv-parse/sync';
import { db } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { getBytes, layout } from '../../core/s3';
import { submit } from '../../starter/submit';
import { readCsvFromS3, requireStack, startWatcher, startWorkers, teardown, uniqueName, waitForExperiment, type ManagedProcess } from '../support/harness';
import { EXAMPLE_HUMAN } from '../support/fixtures';
import { cellProfilerForSuite } from '../support/cellprofiler-direct';

/**
 * ExampleHuman through cpflow with the real CellProfiler: submit → watcher → workflow → CellProfiler
 * → summary. CellProfiler 4.0.6 found Count_Nuclei 289 and Count_PH3 22 (reference-output). The pinned
 * 5.0.0.dev784 build gives the same PH3 count and 290 nuclei with the same threshold when run directly
 * on these files (test/integration/cellprofiler.test.ts checks cpflow equals a direct run exactly), so
 * nuclei are held to 1% of the reference and PH3 exactly.
 */
jest.setTimeout(900_000);

const DATA = EXAMPLE_HUMAN;
const { executable, maybe } = cellProfilerForSuite('ExampleHuman through cpflow with CellProfiler');

let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;

afterAll(async () => {
  await teardown(workers, watcher);
});

maybe('counts the ExampleHuman nuclei and PH3 cells like CellProfiler does', async () => {
  requireStack();
  const reference = parse(fs.readFileSync(path.join(DATA, 'reference-output', 'Image.csv'), 'utf8'), { columns: true }) as Array<Record<string, string>>;
  const refNuclei = Number(reference[0]!.Count_Nuclei);
  const refPH3 = Number(reference[0]!.Count_PH3);
  [workers, watcher] = await Promise.all([startWorkers({ CPFLOW_CELLPROFILER: executable }), startWatcher()]);

  const submitted = await submit({
    project: uniqueName('examplehuman'),
    name: 'ExampleHuman',
    folder: path.join(DATA, 'images'),
    pipelineFile: path.join(DATA, 'ExampleHuman.cppipe'),
    grouping: GROUPING_PRESETS.examplehuman!.rule,
    engine: 'cellprofiler',
  });
  expect(submitted).toMatchObject({ engine: 'cellprofiler', imageSets: 1, channels: ['DNA', 'PH3', 'cellbody'] });
  const e = await waitForExperiment(submitted.experimentId, undefined, 600_000);
  expect(e.error).toBeNull();
  expect(e.status).toBe('done');

  const [row] = await readCsvFromS3(e.summary_uri!);
  expect(Math.abs(Number(row!.Count_Nuclei) - refNuclei)).toBeLessThanOrEqual(Math.ceil(refNuclei * 0.01));
  expect(Number(row!.Count_PH3)).toBe(refPH3);
  expect(Number(row!.Count_Cells)).toBe(Number(row!.Count_Nuclei));

  // The per-set folder holds CellProfiler's own tables with no prefix, and provenance names the build.
  const setKey = 'AS_09125_050116030001-D03-f00';
  const pool = await db();
  const kinds = await pool.query<Array<{ kind: string }>>(
    'SELECT r.kind FROM result_file r JOIN image_set s ON s.id = r.image_set_id WHERE s.experiment_id = ? ORDER BY r.kind',
    [e.id],
  );
  expect(kinds.map((k) => k.kind)).toEqual(expect.arrayContaining(['provenance', 'table:Cells', 'table:Cytoplasm', 'table:Image', 'table:Nuclei', 'table:PH3']));
  const provenance = JSON.parse((await getBytes(e.bucket, `${layout.setPrefix(e.id, setKey)}provenance.json`)).toString('utf8')) as {
    engine: { name: string; version: string };
    pipelineSha256: string;
    inputs: Array<{ channel: string; sha256: string }>;
  };
  expect(provenance.engine.name).toBe('cellprofiler');
  expect(provenance.engine.version).toMatch(/^5\.0\.0/);
  expect(provenance.pipelineSha256).toBe(e.pipeline_sha256);
  // The grouping rule fed d0 as DNA, d1 as PH3 and d2 as cellbody, as the pipeline expects.
  const sha = (f: string): string => crypto.createHash('sha256').update(fs.readFileSync(path.join(DATA, 'images', f))).digest('hex');
  expect(Object.fromEntries(provenance.inputs.map((i) => [i.channel, i.sha256]))).toEqual({
    DNA: sha('AS_09125_050116030001_D03f00d0.tif'),
    PH3: sha('AS_09125_050116030001_D03f00d1.tif'),
    cellbody: sha('AS_09125_050116030001_D03f00d2.tif'),
  });
  const report = (await getBytes(e.bucket, layout.results(e.id, 'report.html'))).toString('utf8');
  expect(report).toContain('5.0.0');
});
