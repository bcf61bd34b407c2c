import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { mergeImageSetTables, type ImageSetResult, type ReduceStats } from '../../activities/reduce/summary';
import { MAX_BARS, buildFigures, escapeHtml, flattenProvenance, jsonForScript, renderReport, type ReportInfo } from '../../activities/reduce/report';
import { findChromium, launchChromium, screenshotReport } from '../../activities/reduce/screenshot';
import { parseWell, inferPlateFormat } from '../../activities/reduce/wells';
import { syntheticPlateSets, wellGrid } from './reduce-fixtures';

const discard = () => new Writable({ write: (_chunk, _encoding, callback) => callback() });

const hostileText = '</script><script>window.__injected = true</script><!--';

const info: ReportInfo = {
  experimentId: 42,
  experimentName: `Dose response ${hostileText}`,
  project: 'hcs-lab',
  engine: { name: 'builtin', version: 'cpflow-builtin 0.1.0' },
  provenance: { cpflowVersion: '0.1.0', pipeline: { sha256: 'ab'.repeat(32) }, inputs: [{ channel: 'DNA', files: 48 }], note: hostileText },
  generatedAt: '2026-11-21T23:00:00.000Z',
  workflowUrl: 'http://localhost:8233/namespaces/default/workflows/experiment-42',
};

/** Two plates: P1's wells fit a 96-well plate, P2 uses row M so it needs the 384-well layout. */
async function plateStats(): Promise<ReduceStats> {
  const { sets } = syntheticPlateSets({
    plates: [
      { name: 'P1', wells: wellGrid('BCD', 2, 5) },
      { name: 'P2', wells: wellGrid('M', 14, 17) },
    ],
    sitesPerWell: 2,
    failedKeys: ['P1-C03-f01'],
  });
  sets[0] = { ...sets[0], status: 'failed', error: `bad input ${hostileText}`, tables: [] };
  return mergeImageSetTables(sets, { out: discard(), metadataKeys: ['Plate', 'Well', 'Site'] });
}

describe('report building blocks', () => {
  it('parses wells and infers the plate format from the wells present', () => {
    expect(parseWell('A01')).toEqual({ row: 0, column: 1 });
    expect(parseWell('p24')).toEqual({ row: 15, column: 24 });
    expect(parseWell('AF48')).toEqual({ row: 31, column: 48 });
    expect(parseWell('site-3')).toBeUndefined();
    expect(inferPlateFormat([{ row: 7, column: 12 }])?.wells).toBe(96);
    expect(inferPlateFormat([{ row: 0, column: 13 }])?.wells).toBe(384);
    expect(inferPlateFormat([{ row: 16, column: 1 }])?.wells).toBe(1536);
  });

  it('escapes text for HTML and JSON for a script element', () => {
    expect(escapeHtml('<a href="x">&\'')).toBe('&lt;a href=&quot;x&quot;&gt;&amp;&#39;');
    const json = jsonForScript({ text: hostileText });
    expect(json).not.toMatch(/<\/script|<!--/i);
    expect(JSON.parse(json)).toEqual({ text: hostileText });
  });

  it('flattens nested provenance into readable rows', () => {
    expect(flattenProvenance({ a: 1, b: { c: 'x', d: [1, 2] }, e: [{ f: true }] })).toEqual([
      ['a', '1'],
      ['b.c', 'x'],
      ['b.d', '1, 2'],
      ['e[0].f', 'true'],
    ]);
  });

  it('draws one bar per done set, one heatmap per plate and the right plate sizes', async () => {
    const stats = await plateStats();
    const figures = buildFigures(stats);
    const counts = figures.find((f) => f.id === 'plot-counts');
    const nuclei = counts?.data.find((trace) => trace.name === 'Nuclei');
    expect(nuclei?.visible).toBe(true);
    expect((nuclei?.x as string[]).length).toBe(stats.setsDone);
    expect([...(nuclei?.x as string[])]).toEqual([...(nuclei?.x as string[])].sort());
    const plates = figures.filter((f) => f.id.startsWith('plot-plate-'));
    expect(plates.map((f) => f.title)).toEqual(['Plate P1: mean Nuclei per well (96-well layout)', 'Plate P2: mean Nuclei per well (384-well layout)']);
    // P1-C03's f01 failed: its cell is the Nuclei count of the one done site (row C = 2, column 3).
    const p1 = plates[0].data[0] as { z: (number | null)[][] };
    const c03 = stats.wells.filter((w) => w.well === 'C03' && w.plate === 'P1').map((w) => w.counts.Nuclei);
    expect(c03).toEqual([{ sum: expect.any(Number), n: 1 }]);
    expect(p1.z[2][2]).toBe(c03[0]!.sum);
    expect(p1.z[0][0]).toBeNull(); // A01 has no image set
  });

  it('caps the per-set bar chart at maxBars (MAX_BARS by default) by grouping consecutive sets, in bounded memory', async () => {
    expect(MAX_BARS).toBe(5_000);
    const maxBars = 100;
    const n = maxBars * 2 + 10;
    const sets: ImageSetResult[] = Array.from({ length: n }, (_, i) => ({
      key: `S${String(i).padStart(6, '0')}`,
      status: 'done',
      metadata: {},
      tables: [{ name: 'Image.csv', open: async () => Readable.from([`ImageNumber,Count_Nuclei\n1,${i % 7}\n`]) }],
    }));
    const stats = await mergeImageSetTables(sets, { out: new PassThrough().resume(), metadataKeys: [], maxBars });
    expect(stats.countBars.length).toBeLessThanOrEqual(maxBars);
    expect(stats.setsPerBar).toBe(4);
    expect(stats.countBars.reduce((sum, b) => sum + b.sets, 0)).toBe(n);
    const counts = buildFigures(stats).find((f) => f.id === 'plot-counts');
    const x = counts?.data[0].x as string[];
    const y = counts?.data[0].y as number[];
    expect(x.length).toBe(stats.countBars.length);
    expect(x[0]).toBe('S000000 … S000003');
    expect(y[0]).toBe((0 + 1 + 2 + 3) / 4);
    // Every set is in exactly one bar, in order: the last bar ends with the last set.
    expect(x[x.length - 1]).toMatch(new RegExp(`S${String(n - 1).padStart(6, '0')}$`));
  });
});

const chromiumPath = findChromium();
if (!chromiumPath) console.warn('SKIPPED report rendering tests: no Chromium at /usr/bin/chromium (apt-get install -y chromium, or set CHROMIUM_PATH)');
const describeInBrowser = chromiumPath ? describe : describe.skip;

describeInBrowser('report.html in headless Chromium', () => {
  it('is self-contained and draws every plot', async () => {
    const stats = await plateStats();
    const html = renderReport(stats, info);
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=/i); // no external resources
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-report-'));
    const htmlPath = path.join(directory, 'report.html');
    fs.writeFileSync(htmlPath, html);

    const browser = await launchChromium();
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const requests: string[] = [];
      page.on('request', (request) => requests.push(request.url()));
      await page.goto(`file://${htmlPath}`);
      await page.waitForSelector('html[data-report-ready]', { state: 'attached', timeout: 60_000 });
      expect(await page.getAttribute('html', 'data-report-ready')).toBe('yes');
      expect(requests).toEqual([`file://${htmlPath}`]);

      const figures = buildFigures(stats);
      expect(await page.locator('.js-plotly-plot').count()).toBe(figures.length);
      // Only the visible (Nuclei) trace is drawn: one bar per done image set.
      expect(await page.locator('#plot-counts .bars .point').count()).toBe(stats.setsDone);
      expect(await page.locator('[id^="plot-plate-"] .hm').count()).toBe(2);
      expect(await page.locator('#plot-area .bars .point').count()).toBeGreaterThan(20);
      expect(await page.locator('[id^="plot-intensity-"]').count()).toBe(2); // DNA and PH3

      // Hostile text is shown as text, never run; the failed set's error is listed.
      expect(await page.evaluate(() => (globalThis as unknown as { __injected?: boolean }).__injected)).toBeUndefined();
      expect(await page.locator('script').count()).toBe(3);
      expect(await page.textContent('h1')).toBe(info.experimentName);
      expect(await page.textContent('.engine')).toContain('builtin cpflow-builtin 0.1.0');
      expect(await page.textContent('.engine')).toContain('not CellProfiler');
      const failedRows = await page.locator('td.key').allTextContents();
      expect(failedRows).toEqual(expect.arrayContaining(['P1-B02-f00', 'P1-C03-f01', 'pipeline.sha256']));
    } finally {
      await browser.close();
    }

    const pngPath = path.join(directory, 'report.png');
    const shot = await screenshotReport(htmlPath, pngPath);
    expect(shot).toEqual({ plots: buildFigures(stats).length, externalRequests: [] });
    expect(fs.statSync(pngPath).size).toBeGreaterThan(50_000);
    console.log(`report rendered: ${(html.length / 1e6).toFixed(1)} MB html, screenshot ${pngPath}`);
  }, 120_000);
});
