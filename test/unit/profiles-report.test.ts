import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { profilesFigures, profilesReportDataSchema, type ProfilesReportData, type ProfilesSection } from '../../activities/reduce/profiles-section';
import { buildFigures, renderReport, type ReportInfo } from '../../activities/reduce/report';
import { findChromium, launchChromium, screenshotReport } from '../../activities/reduce/screenshot';
import { mergeImageSetTables } from '../../activities/reduce/summary';
import { syntheticPlateSets, wellGrid } from './reduce-fixtures';

/**
 * The report's profiles section, from report data shaped as activities/profiles/profiles.py writes
 * it: a per-well heatmap of the chosen feature after normalisation with the control wells ringed, a
 * PCA scatter coloured by treatment, and the treatments-against-controls table; drawn in headless
 * Chromium and saved as a screenshot.
 */

const hostile = '</script><script>window.__injected = true</script>';

/** Rows A (controls), B (larger nuclei: positive), C (dimmer: negative), columns 1–6 of a 96-well plate. */
function reportData(): ProfilesReportData {
  const wells = ['A', 'B', 'C'].flatMap((row, r) =>
    Array.from({ length: 6 }, (_, c) => {
      const treatment = ['DMSO', 'enlarge', `dim ${hostile}`][r] ?? '';
      const value = r === 1 ? 4 + c * 0.3 : r === 2 ? -0.2 + c * 0.05 : -1 + c * 0.4;
      return {
        plate: 'P1',
        well: `${row}${String(c + 1).padStart(2, '0')}`,
        treatment,
        control: r === 0,
        cells: 20 + c,
        value,
        pc1: r === 1 ? 3 + c * 0.1 : r === 2 ? -4 - c * 0.1 : c * 0.1 - 0.3,
        pc2: r === 1 ? 1 : r === 2 ? -0.5 : 0.2 * c - 0.5,
      };
    }),
  );
  return profilesReportDataSchema.parse({
    feature: 'Nuclei_AreaShape_Area',
    normalization: 'standardize',
    controls: { column: 'control_type', value: 'negcon' },
    treatmentColumn: 'treatment',
    pca: { explained: [0.71, 0.2], features: 4 },
    wells,
    separation: [
      { treatment: `dim ${hostile}`, wells: 6, distance: 6.1, nearestWell: 5.2, controlSpread: 1.4, separates: true, topFeatures: [{ feature: 'Nuclei_Intensity_MeanIntensity_DNA', shift: -9.1 }] },
      { treatment: 'enlarge', wells: 6, distance: 4.2, nearestWell: 3.9, controlSpread: 1.4, separates: true, topFeatures: [{ feature: 'Nuclei_AreaShape_Area', shift: 4.8 }] },
    ],
    warnings: ['plate P2 has no control_type=negcon well with results: normalised against all its wells'],
  });
}

async function baseStats() {
  const { sets } = syntheticPlateSets({ plates: [{ name: 'P1', wells: wellGrid('ABC', 1, 6) }], sitesPerWell: 1 });
  const discard = new Writable({ write: (_c, _e, cb) => cb() });
  return mergeImageSetTables(sets, { out: discard, metadataKeys: ['Plate', 'Well', 'Site'] });
}

const info = (profiles: ProfilesSection): ReportInfo => ({
  experimentId: 7,
  experimentName: 'Profiles plate',
  project: 'lab',
  engine: { name: 'builtin', version: 'cpflow-builtin 0.1.0' },
  provenance: { profiles: { cytotable: '1.2.6', pycytominer: '1.7.1' } },
  generatedAt: '2026-11-23T12:00:00.000Z',
  profiles,
});

describe('profiles section figures', () => {
  it('draws one heatmap per plate with the control wells ringed, and a PCA trace per treatment', () => {
    const data = reportData();
    const figures = profilesFigures({ data });
    expect(figures.map((f) => f.id)).toEqual(['plot-profile-plate-0', 'plot-profile-pca']);
    const [heatmap, rings] = figures[0]?.data ?? [];
    const z = heatmap?.z as (number | null)[][];
    expect(z[1]?.[0]).toBe(4); // B01: the enlarged nuclei, above the controls
    expect(z[2]?.[0]).toBe(-0.2); // C01
    expect(z[3]?.[0]).toBeNull(); // D01 not imaged
    expect(heatmap?.zmid).toBe(0);
    expect(rings).toMatchObject({ type: 'scatter', x: ['1', '2', '3', '4', '5', '6'], y: ['A', 'A', 'A', 'A', 'A', 'A'] });
    const pca = figures[1]?.data ?? [];
    expect(pca.map((t) => t.name)).toEqual(['DMSO (control)', `dim ${hostile}`, 'enlarge']);
    expect(pca.map((t) => (t.x as number[]).length)).toEqual([6, 6, 6]);
    // An error instead of data draws nothing.
    expect(profilesFigures({ error: 'no profiling tools' })).toEqual([]);
  });
});

const chromiumPath = findChromium();
if (!chromiumPath) console.warn('SKIPPED profiles report rendering: no Chromium at /usr/bin/chromium');
const describeInBrowser = chromiumPath ? describe : describe.skip;

describeInBrowser('profiles section in headless Chromium', () => {
  it('draws the heatmap, the PCA scatter and the separation table, and says why when there are no profiles', async () => {
    const stats = await baseStats();
    const data = reportData();
    const html = renderReport(stats, info({ data, cells: 2_480, features: { aggregated: 8, selected: 4 }, files: ['s3://b/cpflow/7/results/single_cells.parquet'] }));
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-profiles-report-'));
    const htmlPath = path.join(directory, 'report.html');
    fs.writeFileSync(htmlPath, html);

    const browser = await launchChromium();
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      await page.goto(`file://${htmlPath}`);
      await page.waitForSelector('html[data-report-ready]', { state: 'attached', timeout: 60_000 });
      expect(await page.getAttribute('html', 'data-report-ready')).toBe('yes');
      expect(await page.locator('.js-plotly-plot').count()).toBe(buildFigures(stats).length + 2);
      expect(await page.locator('#profiles #plot-profile-plate-0 .hm').count()).toBe(1);
      // Six ringed control wells, and 18 wells in the scatter.
      expect(await page.locator('#plot-profile-plate-0 .scatterlayer .point').count()).toBe(6);
      expect(await page.locator('#plot-profile-pca .scatterlayer .point').count()).toBe(18);
      const rows = await page.locator('#profiles table.separation tbody tr').allTextContents();
      expect(rows).toHaveLength(2);
      expect(rows[1]).toContain('enlarge');
      expect(rows[1]).toContain('Nuclei_AreaShape_Area +4.80');
      expect(await page.textContent('#profiles')).toContain('2,480 cells');
      expect(await page.textContent('#profiles')).toContain('plate P2 has no control_type=negcon well');
      expect(await page.evaluate(() => (globalThis as unknown as { __injected?: boolean }).__injected)).toBeUndefined();
      await page.locator('#profiles').screenshot({ path: path.join(directory, 'profiles-section.png') });
    } finally {
      await browser.close();
    }
    const shot = await screenshotReport(htmlPath, path.join(directory, 'report.png'));
    expect(shot).toEqual({ plots: buildFigures(stats).length + 2, externalRequests: [] });
    console.log(`profiles section rendered: ${path.join(directory, 'profiles-section.png')}`);

    const failedHtml = renderReport(stats, info({ error: 'no profiling tools on reduce worker w1' }));
    expect(failedHtml).toContain('No profiles: no profiling tools on reduce worker w1');
    expect(failedHtml).not.toContain('plot-profile-');
  }, 120_000);
});
