/**
 * The experiment's `report.html`: one self-contained file (Plotly inlined, data embedded as JSON),
 * readable offline and from an S3 presigned URL alike: no CDN, no network.
 *
 * The Plotly figures (data + layout) are built here in TypeScript; the page's own script only hands
 * each one to `Plotly.newPlot`, so what is drawn is decided (and testable) on this side.
 */
import fs from 'node:fs';
import { profilesFigures, profilesSectionHtml, type ProfilesSection } from './profiles-section';
import { MAX_BARS, type DistributionSeries, type ReduceStats } from './summary';
import { inferPlateFormat, parseWell, rowLabel, type WellPosition } from './wells';

export interface ReportInfo {
  experimentId: number | string;
  experimentName: string;
  project: string;
  engine: { name: string; version: string };
  provenance: Record<string, unknown>;
  generatedAt: string;
  workflowUrl?: string;
  /** Experiments with a platemap: the profiles section (profiles-section.ts). */
  profiles?: ProfilesSection;
}

export { MAX_BARS };
const HISTOGRAM_BINS = 60;

/** A Plotly figure as handed to `Plotly.newPlot(element, data, layout, config)`. */
export interface PlotFigure {
  id: string;
  title: string;
  note?: string;
  data: Record<string, unknown>[];
  layout: Record<string, unknown>;
}

let plotlyBundle: string | undefined;

/** plotly.min.js, checked once to be safe to inline in a <script> element. */
function loadPlotlyBundle(): string {
  if (plotlyBundle !== undefined) return plotlyBundle;
  const source = fs.readFileSync(require.resolve('plotly.js-dist-min'), 'utf8');
  // `</script` would end the element early; `<!--` followed by `<script` would switch the HTML parser
  // into its "double escaped" state. Neither can be escaped generically without risking the JS
  // (e.g. inside regular expressions), so refuse loudly instead of emitting a broken report.
  if (/<\/script/i.test(source) || (source.includes('<!--') && /<script/i.test(source))) {
    throw new Error('plotly.js-dist-min bundle contains </script or <!--…<script and cannot be inlined safely');
  }
  plotlyBundle = source;
  return source;
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);
}

/** JSON safe inside <script type="application/json">: no `<` at all, so no `</script>` or `<!--`. */
export function jsonForScript(value: unknown): string {
  return JSON.stringify(value).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

const naturalOrder = new Intl.Collator('en', { numeric: true, sensitivity: 'base' });

/** The object the per-well heatmap and the default bar trace show: Nuclei when present. */
function primaryObject(stats: ReduceStats): string | undefined {
  const names = Object.keys(stats.objectTotals);
  return names.includes('Nuclei') ? 'Nuclei' : names.sort(naturalOrder.compare)[0];
}

/** Four significant digits keep histograms exact to the eye while shrinking the embedded JSON. */
function roundForPlot(value: number): number {
  return Number(value.toPrecision(4));
}

function countsFigure(stats: ReduceStats, primary: string | undefined): PlotFigure | undefined {
  const bars = stats.countBars;
  const objects = Object.keys(stats.objectTotals).sort(naturalOrder.compare);
  if (bars.length === 0 || objects.length === 0) return undefined;
  const blockSize = stats.setsPerBar;
  const labels = bars.map((b) => (b.sets === 1 ? b.first : `${b.first} … ${b.last}`));
  const data = objects.map((object) => ({
    type: 'bar',
    name: object,
    x: labels,
    y: bars.map((b) => {
      const c = b.counts[object];
      return c === undefined || c.n === 0 ? null : roundForPlot(c.sum / c.n);
    }),
    // Only the primary object is drawn at first; the others are one legend click away.
    visible: object === primary ? true : 'legendonly',
  }));
  return {
    id: 'plot-counts',
    title: 'Objects per image set',
    note:
      blockSize > 1
        ? `${stats.setsDone.toLocaleString('en')} done image sets in image set order, shown as ${bars.length.toLocaleString('en')} bars of ${blockSize} consecutive sets (mean count per bar).`
        : `${stats.setsDone.toLocaleString('en')} done image sets in image set order. Click a legend entry to show another object.`,
    data,
    layout: {
      barmode: 'group',
      height: 380,
      margin: { t: 20, r: 20, b: 110, l: 60 },
      xaxis: { type: 'category', tickangle: -45, automargin: true, title: { text: 'Image set' } },
      yaxis: { title: { text: 'Objects' }, rangemode: 'tozero' },
      legend: { orientation: 'h', y: 1.08 },
    },
  };
}

/**
 * Overlaid histograms share one set of bins (from the exact min/max over all series, not just the
 * samples), so their heights are comparable: Plotly would otherwise bin each trace on its own.
 */
function histogramTraces(series: DistributionSeries[]): Record<string, unknown>[] {
  const low = Math.min(...series.map((s) => s.min ?? Infinity));
  const high = Math.max(...series.map((s) => s.max ?? -Infinity));
  const size = high > low ? (high - low) / HISTOGRAM_BINS : 1;
  return series.map((s) => ({
    type: 'histogram',
    name: s.object,
    x: s.sample.map(roundForPlot),
    xbins: { start: low, end: high + size / 2, size },
    histnorm: 'percent',
    opacity: 0.6,
  }));
}

function samplingNote(series: DistributionSeries[]): string {
  const sampled = series.filter((s) => s.sample.length < s.count);
  const counts = series.map((s) => `${s.object}: ${s.count.toLocaleString('en')} objects, mean ${s.mean === null ? '–' : s.mean.toPrecision(4)}`).join('; ');
  return sampled.length === 0 ? counts : `${counts}. Histograms drawn from a random sample of ${sampled[0].sample.length.toLocaleString('en')} objects per series.`;
}

function distributionFigures(stats: ReduceStats): PlotFigure[] {
  const figures: PlotFigure[] = [];
  const areas = stats.distributions.filter((d) => d.measurement === 'AreaShape_Area' && d.count > 0);
  if (areas.length > 0) {
    figures.push({
      id: 'plot-area',
      title: 'Object area',
      note: samplingNote(areas),
      data: histogramTraces(areas),
      layout: {
        barmode: 'overlay',
        height: 340,
        margin: { t: 20, r: 20, b: 50, l: 60 },
        xaxis: { title: { text: 'AreaShape_Area (pixels)' } },
        yaxis: { title: { text: '% of objects' } },
        legend: { orientation: 'h', y: 1.1 },
      },
    });
  }
  const channels = [...new Set(stats.distributions.flatMap((d) => (d.channel !== undefined && d.count > 0 ? [d.channel] : [])))].sort(naturalOrder.compare);
  channels.forEach((channel, index) => {
    const series = stats.distributions.filter((d) => d.channel === channel && d.count > 0);
    figures.push({
      id: `plot-intensity-${index}`,
      title: `Mean intensity, channel ${channel}`,
      note: samplingNote(series),
      data: histogramTraces(series),
      layout: {
        barmode: 'overlay',
        height: 300,
        margin: { t: 20, r: 20, b: 50, l: 60 },
        xaxis: { title: { text: `Intensity_MeanIntensity_${channel}` } },
        yaxis: { title: { text: '% of objects' } },
        legend: { orientation: 'h', y: 1.12 },
      },
    });
  });
  return figures;
}

function plateFigures(stats: ReduceStats, primary: string | undefined): PlotFigure[] {
  if (primary === undefined) return [];
  // plate → well position key → sum and number of its done sites' counts
  const plates = new Map<string, Map<string, { position: WellPosition; well: string; sum: number; n: number }>>();
  for (const entry of stats.wells) {
    const position = parseWell(entry.well);
    const count = entry.counts[primary];
    if (position === undefined || count === undefined || count.n === 0) continue;
    let wells = plates.get(entry.plate);
    if (!wells) plates.set(entry.plate, (wells = new Map()));
    const id = `${position.row}:${position.column}`;
    let cell = wells.get(id);
    if (!cell) wells.set(id, (cell = { position, well: entry.well, sum: 0, n: 0 }));
    cell.sum += count.sum;
    cell.n += count.n;
  }
  const figures: PlotFigure[] = [];
  [...plates.keys()].sort(naturalOrder.compare).forEach((plate, index) => {
    const wells = [...(plates.get(plate)?.values() ?? [])];
    const format = inferPlateFormat(wells.map((w) => w.position));
    if (format === undefined) return;
    const rows = Array.from({ length: format.rows }, (_, r) => rowLabel(r));
    const columns = Array.from({ length: format.columns }, (_, c) => String(c + 1));
    const z: (number | null)[][] = rows.map(() => columns.map(() => null));
    const sites: (number | null)[][] = rows.map(() => columns.map(() => null));
    for (const { position, sum, n } of wells) {
      z[position.row][position.column - 1] = roundForPlot(sum / n);
      sites[position.row][position.column - 1] = n;
    }
    const cellPixels = format.wells === 96 ? 44 : format.wells === 384 ? 30 : 16;
    figures.push({
      id: `plot-plate-${index}`,
      title: `${plate === '' ? 'Plate' : `Plate ${plate}`}: mean ${primary} per well (${format.wells}-well layout)`,
      note: `${wells.length} wells with results; empty cells had no done image set.`,
      data: [
        {
          type: 'heatmap',
          x: columns,
          y: rows,
          z,
          customdata: sites,
          colorscale: 'Viridis',
          xgap: 2,
          ygap: 2,
          hoverongaps: false,
          colorbar: { title: { text: primary } },
          hovertemplate: `Well %{y}%{x}<br>mean ${primary}: %{z}<br>image sets: %{customdata}<extra></extra>`,
        },
      ],
      layout: {
        width: format.columns * cellPixels + 160,
        height: format.rows * cellPixels + 90,
        margin: { t: 20, r: 20, b: 40, l: 50 },
        xaxis: { type: 'category', side: 'top', tickfont: { size: 10 } },
        yaxis: { type: 'category', autorange: 'reversed', tickfont: { size: 10 } },
        plot_bgcolor: '#f3f4f6',
      },
    });
  });
  return figures;
}

export function buildFigures(stats: ReduceStats): PlotFigure[] {
  const primary = primaryObject(stats);
  const counts = countsFigure(stats, primary);
  return [...(counts ? [counts] : []), ...plateFigures(stats, primary), ...distributionFigures(stats)];
}

/** Nested provenance as dotted-path rows, so it reads as a table rather than a JSON dump. */
export function flattenProvenance(value: unknown, prefix = '', rows: [string, string][] = [], depth = 0): [string, string][] {
  const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (depth < 5 && isPlainObject(value)) {
    for (const [key, inner] of Object.entries(value)) flattenProvenance(inner, prefix ? `${prefix}.${key}` : key, rows, depth + 1);
  } else if (depth < 5 && Array.isArray(value) && value.some((v) => typeof v === 'object' && v !== null)) {
    value.forEach((inner, index) => flattenProvenance(inner, `${prefix}[${index}]`, rows, depth + 1));
  } else if (Array.isArray(value)) {
    rows.push([prefix, value.map(String).join(', ')]);
  } else {
    rows.push([prefix, typeof value === 'string' ? value : value === undefined ? '' : JSON.stringify(value)]);
  }
  return rows;
}

const STYLE = `
:root { color-scheme: light; --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --accent: #2563eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 48px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 600; }
header .sub { color: var(--muted); }
.engine { display: inline-block; margin-top: 8px; padding: 2px 10px; border: 1px solid var(--line); border-radius: 999px; background: #f8fafc; }
.engine.warn { border-color: #f59e0b; background: #fffbeb; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; margin: 22px 0 8px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card.bad .value { color: #b91c1c; }
section { margin-top: 30px; }
h2 { font-size: 17px; font-weight: 600; margin: 0 0 4px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.note { color: var(--muted); font-size: 12.5px; margin: 4px 0 8px; }
.plot { width: 100%; }
.plates { display: flex; flex-wrap: wrap; gap: 24px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; vertical-align: top; padding: 5px 10px; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; white-space: nowrap; }
td.key { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: nowrap; }
td.value, td.error { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; word-break: break-all; }
td.error { color: #991b1b; }
a { color: var(--accent); }
details summary { cursor: pointer; color: var(--muted); }
#report-error { display: none; color: #b91c1c; }
`;

// Runs in the page: draws every figure, then flags the document so screenshots know plots are done.
const CLIENT_SCRIPT = `
(function () {
  var payload = JSON.parse(document.getElementById('report-data').textContent);
  var config = { displaylogo: false, responsive: true };
  Promise.all(payload.figures.map(function (f) {
    return Plotly.newPlot(document.getElementById(f.id), f.data, f.layout, config);
  })).then(function () {
    document.documentElement.setAttribute('data-report-ready', 'yes');
  }, function (error) {
    var box = document.getElementById('report-error');
    box.textContent = 'Plots could not be drawn: ' + error;
    box.style.display = 'block';
    document.documentElement.setAttribute('data-report-ready', 'error');
  });
})();
`;

function card(label: string, value: number | string, extraClass = ''): string {
  const shown = typeof value === 'number' ? value.toLocaleString('en') : value;
  return `<div class="card ${extraClass}"><div class="value">${escapeHtml(shown)}</div><div class="label">${escapeHtml(label)}</div></div>`;
}

function figureSection(figure: PlotFigure): string {
  return `<div class="figure"><h2>${escapeHtml(figure.title)}</h2>${figure.note ? `<p class="note">${escapeHtml(figure.note)}</p>` : ''}<div id="${escapeHtml(figure.id)}" class="plot"></div></div>`;
}

export function renderReport(stats: ReduceStats, info: ReportInfo): string {
  const figures = buildFigures(stats);
  const setsTotal = stats.setsDone + stats.setsFailed;
  const engineLabel = `${info.engine.name} ${info.engine.version}`;
  const notCellProfiler = info.engine.name.toLowerCase() !== 'cellprofiler';
  const workflowLink = info.workflowUrl && /^https?:\/\//i.test(info.workflowUrl) ? ` · <a href="${escapeHtml(info.workflowUrl)}">workflow run</a>` : '';

  const cards = [
    card('Image sets', setsTotal),
    card('Done', stats.setsDone),
    card('Failed', stats.setsFailed, stats.setsFailed > 0 ? 'bad' : ''),
    ...(stats.setsWithTableProblems > 0 ? [card('Done, tables unreadable', stats.setsWithTableProblems, 'bad')] : []),
    ...Object.entries(stats.objectTotals)
      .sort(([a], [b]) => naturalOrder.compare(a, b))
      .map(([object, total]) => card(`${object} objects`, total)),
  ].join('');

  const countFigure = figures.filter((f) => f.id === 'plot-counts');
  const plateFigs = figures.filter((f) => f.id.startsWith('plot-plate-'));
  const distributionFigs = figures.filter((f) => f.id === 'plot-area' || f.id.startsWith('plot-intensity-'));

  const failuresTable =
    stats.failures.length === 0
      ? '<p class="note">No image set failed.</p>'
      : `<table><thead><tr><th>Image set</th><th>Error</th></tr></thead><tbody>${stats.failures
          .map((f) => `<tr><td class="key">${escapeHtml(f.key)}</td><td class="error">${escapeHtml(f.error)}</td></tr>`)
          .join('')}</tbody></table>${stats.failuresNotListed > 0 ? `<p class="note">…and ${stats.failuresNotListed.toLocaleString('en')} more failed sets (see summary.csv).</p>` : ''}`;

  const provenanceRows = flattenProvenance(info.provenance);
  const provenanceTable =
    provenanceRows.length === 0
      ? '<p class="note">No provenance recorded.</p>'
      : `<table><tbody>${provenanceRows.map(([key, value]) => `<tr><td class="key">${escapeHtml(key)}</td><td class="value">${escapeHtml(value)}</td></tr>`).join('')}</tbody></table>`;

  const profileFigures = info.profiles ? profilesFigures(info.profiles) : [];
  const payload = { experimentId: info.experimentId, generatedAt: info.generatedAt, figures: [...figures, ...profileFigures] };

  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(`${info.experimentName}: cpflow report`)}</title>
<style>${STYLE}</style>
</head>
<body>
<main>
<header>
  <h1>${escapeHtml(info.experimentName)}</h1>
  <div class="sub">Experiment ${escapeHtml(String(info.experimentId))} · project ${escapeHtml(info.project)} · generated ${escapeHtml(info.generatedAt)}${workflowLink}</div>
  <div class="engine${notCellProfiler ? ' warn' : ''}">Engine: <strong>${escapeHtml(engineLabel)}</strong>${
    notCellProfiler ? ` · measurements come from the ${escapeHtml(info.engine.name)} engine, not CellProfiler` : ''
  }</div>
</header>
<div class="cards">${cards}</div>
<p id="report-error"></p>
${countFigure.map((f) => `<section>${figureSection(f)}</section>`).join('')}
${plateFigs.length > 0 ? `<section class="plates">${plateFigs.map(figureSection).join('')}</section>` : ''}
${info.profiles ? profilesSectionHtml(info.profiles, profileFigures, figureSection, escapeHtml) : ''}
${distributionFigs.map((f) => `<section>${figureSection(f)}</section>`).join('')}
<section><h2>Failed image sets (${stats.setsFailed.toLocaleString('en')})</h2>${failuresTable}</section>
<section><h2>Provenance</h2>${provenanceTable}</section>
<section><details><summary>summary.csv columns (${stats.columns.length})</summary><p class="note">${escapeHtml(stats.columns.join(', '))}</p></details></section>
</main>
<script type="application/json" id="report-data">${jsonForScript(payload)}</script>
<script>${loadPlotlyBundle()}</script>
<script>${CLIENT_SCRIPT}</script>
</body>
</html>
`;
}
