import { promises as fs } from 'fs';
import path from 'path';
import { CPFLOW_VERSION } from '../../core/version';
import { ImageSetInputError, type Engine, type EngineIdentity, type EngineRunInput, type EngineRunResult } from './types';

/**
 * The no-op engine: writes a minimal, well-formed Image.csv and Nuclei.csv per image set without
 * opening the images. It exists to measure cpflow's dispatch cost (S3 transfers, Temporal round trips,
 * MariaDB mirror, reduce) with the analysis itself taken out. Its tables carry no measurement of the
 * images, so it is named `noop` in every provenance record and never mistaken for a real analysis.
 */

export const NOOP_ENGINE_NAME = 'noop';
export const NOOP_ENGINE_VERSION = `cpflow-noop ${CPFLOW_VERSION}`;

/** A stable per-set count (from the key), so merged summaries vary across wells and are checkable. */
export function noopNucleusCount(key: string): number {
  let hash = 0;
  for (let i = 0; i < key.length; i++) hash = (hash * 31 + key.charCodeAt(i)) >>> 0;
  return hash % 5;
}

const csvCell = (v: string | number): string => {
  const s = String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};
const csvLine = (cells: Array<string | number>): string => `${cells.map(csvCell).join(',')}\n`;

/** The tables the no-op engine writes for one image set (name → CSV text). */
export function noopTables(set: { key: string; metadata: Record<string, string>; files: Array<{ channel: string; path: string }> }, imageNumber: number): Array<{ name: string; text: string }> {
  const count = noopNucleusCount(set.key);
  const metadata = Object.entries(set.metadata).sort(([a], [b]) => a.localeCompare(b));
  const fileColumns = set.files.map((f) => [`FileName_${f.channel}`, path.basename(f.path)] as const);
  const imageColumns: Array<readonly [string, string | number]> = [
    ['ImageNumber', imageNumber],
    ['Count_Nuclei', count],
    ...fileColumns,
    ['ImageSet_Key', set.key],
    ...metadata.map(([k, v]) => [`Metadata_${k}`, v] as const),
  ];
  let nuclei = csvLine(['ImageNumber', 'ObjectNumber', 'AreaShape_Area']);
  for (let object = 1; object <= count; object++) nuclei += csvLine([imageNumber, object, 100 + 10 * object]);
  return [
    { name: 'Image.csv', text: csvLine(imageColumns.map(([name]) => name)) + csvLine(imageColumns.map(([, value]) => value)) },
    { name: 'Nuclei.csv', text: nuclei },
  ];
}

export interface NoopEngineOptions {
  /** Benchmarks: append each analysed set's key to this file, so a drill can count sets analysed twice. */
  runLog?: string;
}

export function createNoopEngine(options: NoopEngineOptions = {}): Engine {
  const identity: EngineIdentity = { name: NOOP_ENGINE_NAME, version: NOOP_ENGINE_VERSION };
  return {
    identity: async () => identity,
    run: async (input: EngineRunInput): Promise<EngineRunResult> => {
      const sets: EngineRunResult['sets'] = [];
      for (const [index, set] of input.imageSets.entries()) {
        if (input.signal?.aborted) throw Object.assign(new Error('noop engine aborted'), { name: 'AbortError' });
        if (!set.key || set.key.includes('/') || set.key.includes('\\') || set.key === '.' || set.key === '..') {
          throw new ImageSetInputError(`Image set key ${JSON.stringify(set.key)} cannot be used as a directory name`, set.key);
        }
        const tables = noopTables(set, index + 1);
        const setDir = path.join(input.outDir, set.key);
        await fs.mkdir(setDir, { recursive: true });
        await Promise.all(tables.map((t) => fs.writeFile(path.join(setDir, t.name), t.text)));
        sets.push({ key: set.key, files: tables.map((t) => t.name) });
        if (options.runLog) await fs.appendFile(options.runLog, `${set.key}\n`);
      }
      return { engine: identity, sets };
    },
  };
}
