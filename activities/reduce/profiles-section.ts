/**
 * The report's profiles section (experiments with a platemap): per plate, a heatmap of one feature
 * after normalisation with the control wells marked; a PCA scatter of the wells coloured by
 * treatment; and which treatments separate from the controls. Drawn from the small
 * `results/profiles/report-data.json` the profiles step writes (one row per well).
 */
import { z } from 'zod';
import { inferPlateFormat, parseWell, rowLabel, type WellPosition } from './wells';

/** A Plotly figure, as report.ts hands it to `Plotly.newPlot` (same shape as its PlotFigure). */
export interface ProfilesFigure {
  id: string;
  title: string;
  note?: string;
  data: Record<string, unknown>[];
  layout: Record<string, unknown>;
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

export const profilesReportDataSchema = z.object({
  feature: z.string(),
  normalization: z.string(),
  controls: z.object({ column: z.string(), value: z.string() }).nullable(),
  treatmentColumn: z.string().nullable(),
  pca: z.object({ explained: z.array(z.number()), features: z.number().int() }).nullable(),
  wells: z.array(
    z.object({
      plate: z.string(),
      well: z.string(),
      treatment: z.string(),
      control: z.boolean(),
      cells: z.number().int(),
      value: z.number().nullable(),
      pc1: z.number().nullable(),
      pc2: z.number().nullable(),
    }),
  ),
  separation: z.array(separationSchema),
  warnings: z.array(z.string()),
});
export type ProfilesReportData = z.infer<typeof profilesReportDataSchema>;

/** What the report knows of the profiles step: its data and files, or why there are none. */
export interface ProfilesSection {
  data?: ProfilesReportData;
  /** S3 URIs of the profile files, listed under the figures. */
  files?: string[];
  error?: string;
  cells?: number;
  features?: { aggregated: number; selected: number };
}

/** Colours for treatments (Plotly's default cycle); controls are always drawn in black. */
const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
const CONTROL_COLOUR = '#111827';
const naturalOrder = new Intl.Collator('en', { numeric: true, sensitivity: 'base' });
const round = (value: number): number => Number(value.toPrecision(4));

function heatmapFigures(data: ProfilesReportData): ProfilesFigure[] {
  const plates = [...new Set(data.wells.map((w) => w.plate))].sort(naturalOrder.compare);
  const figures: ProfilesFigure[] = [];
  plates.forEach((plate, index) => {
    const wells = data.wells.flatMap((w) => {
      const position = w.plate === plate ? parseWell(w.well) : undefined;
      return position ? [{ ...w, position }] : [];
    });
    const format = inferPlateFormat(wells.map((w) => w.position as WellPosition));
    if (format === undefined) return;
    const rows = Array.from({ length: format.rows }, (_, r) => rowLabel(r));
    const columns = Array.from({ length: format.columns }, (_, c) => String(c + 1));
    const z: (number | null)[][] = rows.map(() => columns.map(() => null));
    const text: (string | null)[][] = rows.map(() => columns.map(() => null));
    for (const w of wells) {
      z[w.position.row][w.position.column - 1] = w.value === null ? null : round(w.value);
      text[w.position.row][w.position.column - 1] = `${w.treatment}${w.control ? ' (control)' : ''}, ${w.cells} cells`;
    }
    const limit = Math.max(1e-9, ...wells.map((w) => Math.abs(w.value ?? 0)));
    const controls = wells.filter((w) => w.control);
    const cellPixels = format.wells === 96 ? 44 : format.wells === 384 ? 30 : 16;
    figures.push({
      id: `plot-profile-plate-${index}`,
      title: `${plate === '' ? 'Plate' : `Plate ${plate}`}: ${data.feature} per well after normalisation`,
      note: `Well medians of single cells, normalised (${data.normalization}) against ${
        data.controls ? `the ${data.controls.column}=${data.controls.value} wells (ringed)` : 'all wells of the plate'
      }; 0 is the control level, units are the normalisation's.`,
      data: [
        {
          type: 'heatmap',
          x: columns,
          y: rows,
          z,
          text,
          // Plotly's RdBu runs blue (low) to red (high): above the controls is red.
          colorscale: 'RdBu',
          zmin: -limit,
          zmax: limit,
          zmid: 0,
          xgap: 2,
          ygap: 2,
          hoverongaps: false,
          colorbar: { title: { text: 'normalised' } },
          hovertemplate: `Well %{y}%{x}: %{text}<br>${data.feature}: %{z}<extra></extra>`,
        },
        ...(controls.length > 0
          ? [
              {
                type: 'scatter',
                mode: 'markers',
                name: 'control wells',
                x: controls.map((w) => String(w.position.column)),
                y: controls.map((w) => rowLabel(w.position.row)),
                marker: { symbol: 'circle-open', size: cellPixels * 0.7, color: CONTROL_COLOUR, line: { width: 2.5 } },
                hoverinfo: 'skip',
                showlegend: false,
              },
            ]
          : []),
      ],
      layout: {
        width: format.columns * cellPixels + 170,
        height: format.rows * cellPixels + 90,
        margin: { t: 20, r: 20, b: 40, l: 50 },
        xaxis: { type: 'category', side: 'top', tickfont: { size: 10 }, categoryorder: 'array', categoryarray: columns },
        yaxis: { type: 'category', autorange: 'reversed', tickfont: { size: 10 }, categoryorder: 'array', categoryarray: rows },
        plot_bgcolor: '#f3f4f6',
      },
    });
  });
  return figures;
}

function pcaFigure(data: ProfilesReportData): ProfilesFigure | undefined {
  if (data.pca === null) return undefined;
  const placed = data.wells.filter((w) => w.pc1 !== null && w.pc2 !== null);
  if (placed.length === 0) return undefined;
  const treatments = [...new Set(placed.filter((w) => !w.control).map((w) => w.treatment))].sort(naturalOrder.compare);
  const trace = (name: string, wells: typeof placed, marker: Record<string, unknown>): Record<string, unknown> => ({
    type: 'scatter',
    mode: 'markers',
    name,
    x: wells.map((w) => w.pc1),
    y: wells.map((w) => w.pc2),
    text: wells.map((w) => `${w.plate ? `${w.plate} ` : ''}${w.well}: ${w.treatment}`),
    hovertemplate: '%{text}<br>PC1 %{x:.3g}, PC2 %{y:.3g}<extra></extra>',
    marker: { size: 11, line: { width: 1, color: '#ffffff' }, ...marker },
  });
  const controlWells = placed.filter((w) => w.control);
  const percent = (i: number): string => `${((data.pca?.explained[i] ?? 0) * 100).toFixed(0)}%`;
  return {
    id: 'plot-profile-pca',
    title: 'Wells in profile space (PCA)',
    note: `First two principal components of the normalised, feature-selected well profiles (${data.pca.features} features), coloured by ${
      data.treatmentColumn ?? 'treatment'
    }; control wells are black diamonds.`,
    data: [
      ...(controlWells.length > 0
        ? [trace(`${controlWells[0]?.treatment ?? 'control'} (control)`, controlWells, { color: CONTROL_COLOUR, symbol: 'diamond', size: 12 })]
        : []),
      ...treatments.map((t, i) => trace(t, placed.filter((w) => !w.control && w.treatment === t), { color: PALETTE[i % PALETTE.length] })),
    ],
    layout: {
      height: 420,
      margin: { t: 20, r: 20, b: 55, l: 65 },
      xaxis: { title: { text: `PC1 (${percent(0)} of variance)` }, zeroline: true },
      yaxis: { title: { text: `PC2 (${percent(1)} of variance)` }, zeroline: true },
      legend: { orientation: 'v' },
    },
  };
}

export function profilesFigures(section: ProfilesSection): ProfilesFigure[] {
  if (!section.data) return [];
  const pca = pcaFigure(section.data);
  return [...heatmapFigures(section.data), ...(pca ? [pca] : [])];
}

type Escape = (text: string) => string;

function separationTable(data: ProfilesReportData, escapeHtml: Escape): string {
  if (data.separation.length === 0) {
    return `<p class="note">No treatment compared with controls${data.controls ? '' : ' (the platemap marks no control wells)'}.</p>`;
  }
  const rows = data.separation
    .map(
      (s) =>
        `<tr><td class="key">${escapeHtml(s.treatment)}</td><td>${s.wells}</td><td>${s.distance.toFixed(2)}</td><td>${
          s.separates ? '<strong>yes</strong>' : 'no'
        }</td><td class="value">${escapeHtml(s.topFeatures.map((f) => `${f.feature} ${f.shift >= 0 ? '+' : ''}${f.shift.toFixed(2)}`).join(', '))}</td></tr>`,
    )
    .join('');
  return `<table class="separation"><thead><tr><th>Treatment</th><th>Wells</th><th>Distance from controls</th><th>Separates</th><th>Largest shifts (normalised units)</th></tr></thead><tbody>${rows}</tbody></table>
<p class="note">Distance: of the treatment's mean well profile from the controls' mean, per feature (root mean square). A treatment separates when every one of its wells lies farther from the controls' mean than every control well lies from the mean of the other controls.</p>`;
}

/** The section's HTML; `figureHtml` is report.ts's own figure block, so the section looks like the rest. */
export function profilesSectionHtml(
  section: ProfilesSection,
  figures: ProfilesFigure[],
  figureHtml: (figure: ProfilesFigure) => string,
  escapeHtml: Escape,
): string {
  if (section.error !== undefined) {
    return `<section id="profiles"><h2>Profiles</h2><p class="note" style="color:#b91c1c">No profiles: ${escapeHtml(section.error)}</p></section>`;
  }
  if (!section.data) return '';
  const data = section.data;
  const heatmaps = figures.filter((f) => f.id.startsWith('plot-profile-plate-'));
  const others = figures.filter((f) => !f.id.startsWith('plot-profile-plate-'));
  const summary = [
    `${data.wells.length.toLocaleString('en')} wells`,
    ...(section.cells !== undefined ? [`${section.cells.toLocaleString('en')} cells`] : []),
    ...(section.features ? [`${section.features.aggregated} features, ${section.features.selected} kept by feature selection`] : []),
    `normalised (${data.normalization}) per plate against ${data.controls ? `${data.controls.column}=${data.controls.value} wells` : 'all wells'}`,
  ].join(' · ');
  const warnings = data.warnings.length === 0 ? '' : `<ul class="note">${data.warnings.map((w) => `<li>${escapeHtml(w)}</li>`).join('')}</ul>`;
  const files =
    section.files && section.files.length > 0
      ? `<details><summary>Profile files (${section.files.length})</summary><p class="note">${section.files.map(escapeHtml).join('<br>')}</p></details>`
      : '';
  return `<section id="profiles"><h2>Profiles</h2><p class="note">${escapeHtml(summary)}</p>${warnings}
<div class="plates">${heatmaps.map(figureHtml).join('')}</div>
${others.map(figureHtml).join('')}
<div class="figure"><h2>Treatments against controls</h2>${separationTable(data, escapeHtml)}</div>
${files}</section>`;
}
