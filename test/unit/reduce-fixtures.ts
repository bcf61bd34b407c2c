/**
 * Synthetic ExportToSpreadsheet-style tables for the reduce and report tests. Values are drawn from a
 * seeded generator and the generator returns the truth (counts, per-set means) it used, so tests can
 * compare the merge's output against independently known numbers.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { ImageSetResult, ImageSetTable } from '../../activities/reduce/summary';
import { seededRandom } from '../../core/random';
import { EXAMPLE_HUMAN } from '../support/fixtures';

export const EXAMPLEHUMAN_OUTPUT = path.join(EXAMPLE_HUMAN, 'reference-output');

/** RFC 4180 quoting, written independently of csv-stringify so the tests do not check the library against itself. */
export function csvText(header: string[], rows: (string | number)[][]): string {
  const cell = (value: string | number) => {
    const text = String(value);
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  };
  return [header, ...rows].map((row) => row.map(cell).join(',')).join('\r\n') + '\r\n';
}

export function memoryTable(name: string, text: string): ImageSetTable {
  return { name, open: async () => Readable.from([Buffer.from(text)]) };
}

export function fileTables(directory: string): ImageSetTable[] {
  return fs
    .readdirSync(directory)
    .sort()
    .map((name) => ({ name, open: async () => fs.createReadStream(path.join(directory, name)) }));
}

export async function* toAsyncIterable<T>(items: T[]): AsyncGenerator<T> {
  for (const item of items) yield item;
}

export interface SyntheticTruth {
  key: string;
  nuclei: number;
  meanArea: number | undefined;
  meanDna: number | undefined;
}

export interface SyntheticPlateOptions {
  plates: { name: string; wells: string[] }[];
  sitesPerWell: number;
  failedKeys?: string[];
  seed?: number;
}

/**
 * A plate-based experiment: per set an Image.csv (alphabetical columns, ImageNumber not first, a quoted
 * file name with a comma) and Nuclei.csv / Cells.csv whose counts vary by well, with occasional `nan`.
 */
export function syntheticPlateSets(options: SyntheticPlateOptions): { sets: ImageSetResult[]; truth: SyntheticTruth[] } {
  const random = seededRandom(options.seed ?? 7);
  const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  const sets: ImageSetResult[] = [];
  const truth: SyntheticTruth[] = [];
  for (const plate of options.plates) {
    plate.wells.forEach((well, wellIndex) => {
      const wellDensity = 60 + ((wellIndex * 37) % 140); // a visible gradient across the plate
      for (let site = 0; site < options.sitesPerWell; site += 1) {
        const key = `${plate.name}-${well}-f${String(site).padStart(2, '0')}`;
        const metadata = { Plate: plate.name, Well: well, Site: String(site) };
        if (options.failedKeys?.includes(key)) {
          sets.push({ key, status: 'failed', metadata, error: `ImageSetInputError: ${key}_DNA.tif is truncated (read 0 of 524288 bytes)`, tables: [] });
          continue;
        }
        const nuclei = Math.max(0, Math.round(wellDensity + 12 * normal()));
        const nucleiRows: (string | number)[][] = [];
        const cellRows: (string | number)[][] = [];
        let areaSum = 0;
        let areaN = 0;
        let dnaSum = 0;
        let dnaN = 0;
        for (let object = 1; object <= nuclei; object += 1) {
          const area = Math.max(20, Math.round(130 + 35 * normal()));
          const dna = Math.min(1, Math.max(0.01, 0.22 + 0.04 * normal()));
          const ph3 = random() < 0.08 ? 0.2 + 0.1 * random() : 0.04 + 0.01 * random();
          // Every 23rd object has an undefined area, as CellProfiler writes for degenerate shapes.
          const areaCell = object % 23 === 0 ? 'nan' : area;
          if (areaCell !== 'nan') {
            areaSum += area;
            areaN += 1;
          }
          dnaSum += dna;
          dnaN += 1;
          nucleiRows.push([1, object, areaCell, 10 + random() * 500, 10 + random() * 500, dna, ph3, dna * area]);
          cellRows.push([1, object, Math.round(area * (2.5 + normal() * 0.3)), dna * 0.5, ph3 * 0.9]);
        }
        const imageHeader = ['Count_Cells', 'Count_Nuclei', 'FileName_DNA', 'ImageNumber', 'Metadata_Plate', 'Metadata_Site', 'Metadata_Well', 'Threshold_FinalThreshold_Nuclei'];
        const imageRow = [`${nuclei}.0`, `${nuclei}.0`, `${key}, DNA.tif`, 1, plate.name, site, well, 0.0934];
        sets.push({
          key,
          status: 'done',
          metadata,
          tables: [
            memoryTable('Experiment.csv', csvText(['Key', 'Value'], [['CellProfiler_Version', 'synthetic']])),
            memoryTable('Image.csv', csvText(imageHeader, [imageRow])),
            memoryTable(
              'Nuclei.csv',
              csvText(['ImageNumber', 'ObjectNumber', 'AreaShape_Area', 'AreaShape_Center_X', 'AreaShape_Center_Y', 'Intensity_MeanIntensity_DNA', 'Intensity_MeanIntensity_PH3', 'Intensity_IntegratedIntensity_DNA'], nucleiRows),
            ),
            memoryTable('Cells.csv', csvText(['ImageNumber', 'ObjectNumber', 'AreaShape_Area', 'Intensity_MeanIntensity_DNA', 'Intensity_MeanIntensity_PH3'], cellRows)),
          ],
        });
        truth.push({ key, nuclei, meanArea: areaN > 0 ? areaSum / areaN : undefined, meanDna: dnaN > 0 ? dnaSum / dnaN : undefined });
      }
    });
  }
  return { sets, truth };
}

/** Wells `rows × columns` such as B02…E05, in row-major order. */
export function wellGrid(rows: string, firstColumn: number, lastColumn: number): string[] {
  return [...rows].flatMap((row) => Array.from({ length: lastColumn - firstColumn + 1 }, (_, i) => `${row}${String(firstColumn + i).padStart(2, '0')}`));
}
