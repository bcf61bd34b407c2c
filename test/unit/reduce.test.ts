import fs from 'node:fs';
import path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { parse } from 'csv-parse/sync';
import { mergeImageSetTables, type ImageSetResult } from '../../activities/reduce/summary';
import { ExtraColumnPlan, measureImageSet, summaryOf } from '../../activities/reduce/measure-set';
import { EXAMPLEHUMAN_OUTPUT, csvText, fileTables, memoryTable, syntheticPlateSets, toAsyncIterable, wellGrid } from './reduce-fixtures';

/** Collects everything written to summary.csv and parses it back into header-keyed rows. */
function summarySink(): { out: PassThrough; rows: () => Record<string, string>[]; header: () => string[] } {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (chunk: Buffer) => chunks.push(chunk));
  const records = () => parse(Buffer.concat(chunks).toString('utf8')) as string[][];
  return {
    out,
    header: () => records()[0],
    rows: () => {
      const [header, ...data] = records();
      return data.map((row) => Object.fromEntries(header.map((name, i) => [name, row[i]])));
    },
  };
}

describe('mergeImageSetTables on real CellProfiler output (ExampleHuman)', () => {
  it('counts and means match the CSVs, Image.csv read by header name', async () => {
    const imageHeader = fs.readFileSync(path.join(EXAMPLEHUMAN_OUTPUT, 'Image.csv'), 'utf8').split(/\r?\n/)[0].split(',');
    expect(imageHeader[0]).not.toBe('ImageNumber'); // the fixture really is alphabetical

    // Independent mean of Nuclei AreaShape_Area (the file has no quoted fields, so a plain split is exact).
    const nucleiLines = fs.readFileSync(path.join(EXAMPLEHUMAN_OUTPUT, 'Nuclei.csv'), 'utf8').trim().split(/\r?\n/);
    const areaIndex = nucleiLines[0].split(',').indexOf('AreaShape_Area');
    const areas = nucleiLines.slice(1).map((line) => Number(line.split(',')[areaIndex]));
    const expectedMeanArea = areas.reduce((a, b) => a + b, 0) / areas.length;

    const sink = summarySink();
    const stats = await mergeImageSetTables(toAsyncIterable([{ key: 'D03-f00', status: 'done', metadata: { Well: 'D03' }, tables: fileTables(EXAMPLEHUMAN_OUTPUT) }]), {
      out: sink.out,
      metadataKeys: ['Well'],
    });
    const [row] = sink.rows();
    expect(sink.rows()).toHaveLength(1);
    expect(row.Count_Nuclei).toBe('289');
    expect(row.Count_PH3).toBe('22');
    expect(Number(row.Mean_Nuclei_AreaShape_Area)).toBeCloseTo(expectedMeanArea, 10);
    expect(row.Metadata_Well).toBe('D03');
    expect(row.Status).toBe('done');
    expect(row.Error).toBe('');
    expect(Object.keys(row)).toEqual(expect.arrayContaining(['Mean_Nuclei_Intensity_MeanIntensity_DNA', 'Mean_Cells_Intensity_MeanIntensity_PH3', 'Mean_Cytoplasm_AreaShape_Area']));
    expect(Object.keys(row).some((c) => c.includes('Experiment') || c.includes('MeanIntensityEdge'))).toBe(false);
    expect(stats.objectTotals).toEqual({ Cells: 289, Cytoplasm: 289, Nuclei: 289, PH3: 22 });
    const nucleiArea = stats.distributions.find((d) => d.object === 'Nuclei' && d.measurement === 'AreaShape_Area');
    expect(nucleiArea?.count).toBe(289);
    expect(nucleiArea?.mean).toBeCloseTo(expectedMeanArea, 10);
    expect(nucleiArea?.sample).toHaveLength(289);
  });
});

describe('mergeImageSetTables on synthetic sets with known values', () => {
  const nucleiHeader = ['ImageNumber', 'ObjectNumber', 'AreaShape_Area', 'AreaShape_Perimeter', 'Intensity_MeanIntensityEdge_DNA', 'Intensity_MeanIntensity_DNA'];
  const sets: ImageSetResult[] = [
    // Failed before any done set: held back until the columns are known, still written first.
    { key: 'S0', status: 'failed', metadata: { Well: 'A01' }, error: 'pipeline error: "IdentifyPrimaryObjects", no objects', tables: [] },
    {
      key: 'S1',
      status: 'done',
      metadata: { Well: 'A02' }, // Site comes from Image.csv's Metadata_Site (not in the set's metadata)
      tables: [
        memoryTable('Experiment.csv', csvText(['Key', 'Value'], [['CellProfiler_Version', '5.0.0']])),
        memoryTable(
          'Image.csv',
          csvText(['Count_Nuclei', 'FileName_DNA', 'ImageNumber', 'Metadata_Site', 'Threshold_FinalThreshold_Nuclei'], [['3.0', 'plate 1, A02, DNA.tif', 1, '4', '0.125']]),
        ),
        memoryTable('Nuclei.csv', csvText(nucleiHeader, [[1, 1, 10, 12, 0.9, 0.1], [1, 2, 20, 'nan', 0.9, 0.2], [1, 3, 'nan', 18, 0.9, 0.3]])),
      ],
    },
    {
      key: 'S2',
      status: 'done',
      metadata: { Well: 'A03', Site: '1' },
      tables: [
        memoryTable('Image.csv', csvText(['Count_Nuclei', 'ImageNumber'], [['0.0', 1]])),
        memoryTable('Nuclei.csv', csvText(nucleiHeader, [])),
      ],
    },
    {
      key: 'S3',
      status: 'done',
      metadata: { Well: 'B01', Site: '1' },
      tables: [
        // Different column order and an extra channel the first done set lacks; `inf` and empty are ignored.
        memoryTable('Image.csv', csvText(['ImageNumber', 'Count_Nuclei'], [[1, '2']])),
        memoryTable('Nuclei.csv', csvText(['Intensity_MeanIntensity_GFP', 'AreaShape_Area', 'ObjectNumber', 'Intensity_MeanIntensity_DNA', 'ImageNumber'], [[0.5, 40, 1, 'inf', 1], [0.7, 60, 2, '', 1]])),
      ],
    },
    {
      key: 'S4',
      status: 'done',
      metadata: { Well: 'B02', Site: '1' },
      tables: [
        memoryTable('Image.csv', csvText(['Count_Nuclei', 'ImageNumber'], [['1', 1]])),
        memoryTable('Nuclei.csv', 'ImageNumber,ObjectNumber,AreaShape_Area\n1,1,"5\n'), // unterminated quote
      ],
    },
  ];

  it('writes one row per set in input order with exact means, counts and errors', async () => {
    const sink = summarySink();
    const stats = await mergeImageSetTables(toAsyncIterable(sets), {
      out: sink.out,
      metadataKeys: ['Well', 'Site'],
      extraColumns: ['Mean_Nuclei_AreaShape_Perimeter', 'Threshold_FinalThreshold_Nuclei'],
      concurrency: 3,
    });
    const rows = sink.rows();
    expect(rows.map((r) => r.ImageSet_Key)).toEqual(['S0', 'S1', 'S2', 'S3', 'S4']);
    expect(sink.header()).toEqual([
      'ImageSet_Key', 'Status', 'Error', 'Metadata_Well', 'Metadata_Site', 'Count_Nuclei',
      'Mean_Nuclei_AreaShape_Area', 'Mean_Nuclei_Intensity_MeanIntensity_DNA',
      'Mean_Nuclei_AreaShape_Perimeter', 'Threshold_FinalThreshold_Nuclei',
    ]);
    const [s0, s1, s2, s3, s4] = rows;
    expect(s0).toMatchObject({ Status: 'failed', Error: 'pipeline error: "IdentifyPrimaryObjects", no objects', Metadata_Well: 'A01', Count_Nuclei: '' });
    expect(s1).toMatchObject({ Status: 'done', Error: '', Metadata_Site: '4', Count_Nuclei: '3', Threshold_FinalThreshold_Nuclei: '0.125' });
    expect(Number(s1.Mean_Nuclei_AreaShape_Area)).toBe(15); // (10 + 20) / 2, nan skipped
    expect(Number(s1.Mean_Nuclei_Intensity_MeanIntensity_DNA)).toBeCloseTo(0.2, 12);
    expect(Number(s1.Mean_Nuclei_AreaShape_Perimeter)).toBe(15); // (12 + 18) / 2
    expect(s2).toMatchObject({ Count_Nuclei: '0', Mean_Nuclei_AreaShape_Area: '', Mean_Nuclei_Intensity_MeanIntensity_DNA: '' });
    expect(s3).toMatchObject({ Count_Nuclei: '2', Mean_Nuclei_AreaShape_Area: '50', Mean_Nuclei_Intensity_MeanIntensity_DNA: '' });
    expect(s4.Status).toBe('done');
    expect(s4.Error).toMatch(/^Nuclei\.csv: /);

    expect(stats).toMatchObject({ rows: 5, setsDone: 4, setsFailed: 1, setsWithTableProblems: 1, objectsTotal: 6, objectTotals: { Nuclei: 6 } });
    expect(stats.failures).toEqual([{ key: 'S0', error: 'pipeline error: "IdentifyPrimaryObjects", no objects' }]);
    // The report's bounded per-set data: one bar per done set (few sets), count sums per well.
    expect(stats.firstDoneKey).toBe('S1');
    expect(stats.countBars.map((b) => b.first)).toEqual(['S1', 'S2', 'S3', 'S4']);
    expect(stats.countBars[0]).toEqual({ first: 'S1', last: 'S1', sets: 1, counts: { Nuclei: { sum: 3, n: 1 } } });
    expect(stats.wells.find((w) => w.well === 'A02')).toEqual({ plate: '', well: 'A02', counts: { Nuclei: { sum: 3, n: 1 } } });
    // GFP appears only in a later set: not a summary column, but it does feed the distributions.
    const gfp = stats.distributions.find((d) => d.channel === 'GFP');
    expect(gfp).toMatchObject({ object: 'Nuclei', count: 2, min: 0.5, max: 0.7 });
    const area = stats.distributions.find((d) => d.object === 'Nuclei' && d.measurement === 'AreaShape_Area');
    expect(area).toMatchObject({ count: 4, mean: (10 + 20 + 40 + 60) / 4 });
  });

  it('matches the generator truth over a plate of sets, with object and sample bounds', async () => {
    const { sets: plateSets, truth } = syntheticPlateSets({ plates: [{ name: 'P1', wells: wellGrid('AB', 1, 6) }], sitesPerWell: 2, failedKeys: ['P1-A02-f01'] });
    const sink = summarySink();
    const stats = await mergeImageSetTables(plateSets, { out: sink.out, metadataKeys: ['Plate', 'Well', 'Site'], objectNames: ['Nuclei'], sampleSize: 50 });
    const rows = sink.rows();
    expect(rows).toHaveLength(24);
    expect(Object.keys(rows[0]).filter((c) => c.includes('Cells'))).toEqual([]); // objectNames excluded Cells
    for (const expected of truth) {
      const row = rows.find((r) => r.ImageSet_Key === expected.key);
      expect(Number(row?.Count_Nuclei)).toBe(expected.nuclei);
      expect(Number(row?.Mean_Nuclei_AreaShape_Area)).toBeCloseTo(expected.meanArea ?? NaN, 9);
      expect(Number(row?.Mean_Nuclei_Intensity_MeanIntensity_DNA)).toBeCloseTo(expected.meanDna ?? NaN, 9);
    }
    expect(rows.find((r) => r.ImageSet_Key === 'P1-A02-f01')).toMatchObject({ Status: 'failed', Error: expect.stringContaining('truncated') });
    const totalNuclei = truth.reduce((sum, t) => sum + t.nuclei, 0);
    expect(stats.objectTotals).toEqual({ Nuclei: totalNuclei });
    for (const distribution of stats.distributions) expect(distribution.sample.length).toBeLessThanOrEqual(50);
  });

  it('writes the fixed columns when every set failed', async () => {
    const sink = summarySink();
    const stats = await mergeImageSetTables([{ key: 'only', status: 'failed', metadata: { Well: 'C07' }, error: 'boom', tables: [] }], { out: sink.out, metadataKeys: ['Well'], extraColumns: ['Count_Nuclei'] });
    expect(sink.header()).toEqual(['ImageSet_Key', 'Status', 'Error', 'Metadata_Well', 'Count_Nuclei']);
    expect(sink.rows()).toEqual([{ ImageSet_Key: 'only', Status: 'failed', Error: 'boom', Metadata_Well: 'C07', Count_Nuclei: '' }]);
    expect(stats.columns).toEqual(sink.header());
  });

  it('rejects and destroys the output when a table cannot be read (so the activity retries)', async () => {
    const out = new PassThrough();
    out.resume();
    const failing: ImageSetResult = { key: 'X', status: 'done', metadata: {}, tables: [{ name: 'Image.csv', open: async () => { throw new Error('S3 503 SlowDown'); } }] };
    await expect(mergeImageSetTables([sets[1], failing], { out, metadataKeys: [] })).rejects.toThrow('S3 503 SlowDown');
    expect(out.destroyed).toBe(true);
  });
});

describe('mergeImageSetTables from summaries recorded at analysis time (issue 10)', () => {
  /** Every output of a merge that does not depend on sampling, plus summary.csv's exact bytes. */
  async function mergeOutput(sets: ImageSetResult[], concurrency: number) {
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (chunk: Buffer) => chunks.push(chunk));
    const stats = await mergeImageSetTables(sets, { out, metadataKeys: ['Plate', 'Well', 'Site'], concurrency, sampleSize: 200, sampleSets: 6 });
    return { csv: Buffer.concat(chunks).toString('utf8'), stats };
  }

  it('writes the same summary.csv and exact statistics as reading every table, reading only the sampled sets', async () => {
    const { sets } = syntheticPlateSets({
      plates: [{ name: 'P1', wells: wellGrid('ABC', 1, 8) }, { name: 'P2', wells: wellGrid('A', 1, 4) }],
      sitesPerWell: 2,
      failedKeys: ['P1-B03-f01', 'P2-A02-f00'],
    });
    // One done set with a malformed object table: its problem note must survive the summary too.
    const broken = sets.findIndex((s) => s.status === 'done' && s.key.startsWith('P1-C'));
    sets[broken] = { ...sets[broken], tables: [...sets[broken].tables.filter((t) => t.name !== 'Cells.csv'), memoryTable('Cells.csv', 'ImageNumber,ObjectNumber,AreaShape_Area\n1,1,"unterminated\n')] };

    // What the analysis activity records: the same measurement code over the same tables.
    const plan = new ExtraColumnPlan([]);
    let sampledReads = 0;
    const summarised: ImageSetResult[] = await Promise.all(
      sets.map(async (set) => {
        if (set.status !== 'done') return set;
        const summary = summaryOf(await measureImageSet(set, plan, undefined));
        const refuse = set.tables.map((t) => ({ name: t.name, open: async (): Promise<NodeJS.ReadableStream> => { throw new Error(`${set.key}/${t.name} was read although summarised`); } }));
        return { ...set, tables: refuse, summary: JSON.parse(JSON.stringify(summary)), sampleTables: async () => { sampledReads += 1; return set.tables; } };
      }),
    );

    const fromTables = await mergeOutput(sets, 1);
    const fromSummaries = await mergeOutput(summarised, 32);
    expect(fromSummaries.csv).toBe(fromTables.csv);
    expect(fromSummaries.csv.split('\n').length).toBeGreaterThan(sets.length);
    const comparable = (stats: typeof fromTables.stats) => ({ ...stats, distributions: stats.distributions.map(({ sample, mean, ...exact }) => exact) });
    expect(comparable(fromSummaries.stats)).toEqual(comparable(fromTables.stats));
    fromSummaries.stats.distributions.forEach((d, i) => {
      expect(d.mean).toBeCloseTo(fromTables.stats.distributions[i].mean ?? NaN, 9);
      // The histogram sample comes from the objects of the 6 sampled sets, within the series' range.
      expect(d.sample.length).toBeGreaterThan(0);
      for (const v of d.sample) expect(v >= (d.min ?? 0) && v <= (d.max ?? 0)).toBe(true);
    });
    expect(sampledReads).toBe(6);
    // Reproducible: the same inputs give the same sample.
    const again = await mergeOutput(summarised, 8);
    expect(again.stats.distributions.map((d) => d.sample)).toEqual(fromSummaries.stats.distributions.map((d) => d.sample));
  });
});

describe('mergeImageSetTables streaming', () => {
  it('merges 20,000 generated sets without holding them', async () => {
    const total = 20_000;
    const nucleiText = csvText(['ImageNumber', 'ObjectNumber', 'AreaShape_Area', 'Intensity_MeanIntensity_DNA'], Array.from({ length: 40 }, (_, i) => [1, i + 1, 100 + i, 0.2]));
    const imageText = csvText(['Count_Nuclei', 'ImageNumber'], [['40.0', 1]]);
    async function* generate(): AsyncGenerator<ImageSetResult> {
      for (let i = 0; i < total; i += 1) {
        yield {
          key: `P${Math.floor(i / 3840)}-${String.fromCharCode(65 + ((i >> 1) % 16))}${String(1 + ((i >> 5) % 24)).padStart(2, '0')}-f${i % 2}`,
          status: i % 997 === 0 ? 'failed' : 'done',
          metadata: { Well: 'A01' },
          error: i % 997 === 0 ? 'synthetic failure' : undefined,
          tables: [memoryTable('Image.csv', imageText), memoryTable('Nuclei.csv', nucleiText)],
        };
      }
    }
    let bytes = 0;
    let lines = 0;
    const out = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        bytes += chunk.length;
        for (const byte of chunk) if (byte === 0x0a) lines += 1;
        callback();
      },
    });
    let peakRss = process.memoryUsage().rss;
    const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
    const started = process.hrtime.bigint();
    const progress: number[] = [];
    const stats = await mergeImageSetTables(generate(), { out, metadataKeys: ['Well'], onProgress: (merged) => progress.push(merged) });
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    clearInterval(sampler);
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
    expect(stats.rows).toBe(total);
    expect(lines).toBe(total + 1);
    expect(progress.length).toBeGreaterThan(10);
    expect(progress[progress.length - 1]).toBe(total);
    expect(stats.setsFailed).toBe(Math.ceil(total / 997));
    expect(stats.objectTotals.Nuclei).toBe((total - stats.setsFailed) * 40);
    const area = stats.distributions.find((d) => d.measurement === 'AreaShape_Area');
    expect(area?.sample).toHaveLength(10_000);
    expect(area?.count).toBe((total - stats.setsFailed) * 40);
    console.log(
      `streaming merge: ${total} sets (${stats.objectTotals.Nuclei} objects) in ${seconds.toFixed(1)} s = ${Math.round(total / seconds)} sets/s; ` +
        `summary ${(bytes / 1e6).toFixed(1)} MB; peak RSS ${(peakRss / 1e6).toFixed(0)} MB`,
    );
  }, 300_000);
});
