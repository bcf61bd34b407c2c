import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'csv-parse/sync';
import { endOfFirstRecord, gatherTables, UnreadableTableError, type GatherSet } from '../../activities/profiles/gather';
import { csvText } from './reduce-fixtures';

/**
 * The profiles step's gather: every set's tables into one CSV per table, rows in set order, headers
 * reconciled by name, the Image table given the set's metadata when the engine wrote none, and
 * unreadable sets skipped and counted (outages are not: they propagate, so the step retries).
 */

const table = (name: string, text: string) => ({ name, read: async () => Buffer.from(text) });
const rows = (file: string): Record<string, string>[] => parse(fs.readFileSync(file), { columns: true }) as Record<string, string>[];

describe('gatherTables', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-gather-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('concatenates same-named tables in set order, with one line ending (CellProfiler writes CRLF)', async () => {
    const sets: GatherSet[] = [1, 2, 3].map((id) => ({
      key: `S${id}`,
      metadata: { Plate: 'P1', Well: `A0${id}` },
      tables: [
        table('Image.csv', csvText(['ImageNumber', 'Count_Nuclei', 'FileName_DNA', 'Metadata_Plate', 'Metadata_Well'], [[id, id, `a, "b" ${id}.tif`, 'P1', `A0${id}`]])),
        table('Nuclei.csv', csvText(['ImageNumber', 'ObjectNumber', 'AreaShape_Area'], Array.from({ length: id }, (_, n) => [id, n + 1, 100 * id + n]))),
        table('Experiment.csv', 'Key,Value\nEngine,builtin\n'),
      ],
    }));
    const stats = await gatherTables(sets, dir, { concurrency: 2 });
    expect(stats).toMatchObject({ sets: 3, rows: { 'Image.csv': 3, 'Nuclei.csv': 6 }, setsWithOtherColumns: 0, setsSkipped: 0 });
    expect(fs.readdirSync(dir).sort()).toEqual(['Image.csv', 'Nuclei.csv']); // Experiment.csv is not a measurement table
    const nuclei = rows(path.join(dir, 'Nuclei.csv'));
    expect(nuclei.map((r) => `${r.ImageNumber}/${r.ObjectNumber}=${r.AreaShape_Area}`)).toEqual(['1/1=100', '2/1=200', '2/2=201', '3/1=300', '3/2=301', '3/3=302']);
    expect(rows(path.join(dir, 'Image.csv')).map((r) => r.FileName_DNA)).toEqual(['a, "b" 1.tif', 'a, "b" 2.tif', 'a, "b" 3.tif']);
    expect(fs.readFileSync(path.join(dir, 'Nuclei.csv'), 'utf8')).not.toContain('\r');
  });

  it('maps later headers by name, fills the Image table’s missing metadata from the set, and counts dropped columns', async () => {
    const sets: GatherSet[] = [
      { key: 'S1', metadata: { Plate: 'P1', Well: 'B02' }, tables: [table('Image.csv', 'ImageNumber,Count_Cells\n11,4\n'), table('Cells.csv', 'ImageNumber,ObjectNumber,AreaShape_Area\n11,1,50\n')] },
      // Columns in another order, one extra, one missing.
      { key: 'S2', metadata: { Plate: 'P1', Well: 'B03' }, tables: [table('Image.csv', 'Count_Cells,ImageNumber\n5,12\n'), table('Cells.csv', 'ObjectNumber,Extra,ImageNumber\n1,x,12\n')] },
    ];
    const stats = await gatherTables(sets, dir, { concurrency: 4 });
    expect(rows(path.join(dir, 'Image.csv'))).toEqual([
      { ImageNumber: '11', Count_Cells: '4', Metadata_Plate: 'P1', Metadata_Well: 'B02' },
      { ImageNumber: '12', Count_Cells: '5', Metadata_Plate: 'P1', Metadata_Well: 'B03' },
    ]);
    expect(rows(path.join(dir, 'Cells.csv'))).toEqual([
      { ImageNumber: '11', ObjectNumber: '1', AreaShape_Area: '50' },
      { ImageNumber: '12', ObjectNumber: '1', AreaShape_Area: '' },
    ]);
    expect(stats).toMatchObject({ setsWithOtherColumns: 1, droppedColumns: { Extra: 1 }, rows: { 'Image.csv': 2, 'Cells.csv': 2 } });
  });

  it('skips a set whose table is gone or unparseable, but lets an outage through', async () => {
    const good = (id: number): GatherSet => ({ key: `S${id}`, metadata: {}, tables: [table('Image.csv', `ImageNumber\n${id}\n`)] });
    const missing: GatherSet = { key: 'S8', metadata: {}, tables: [{ name: 'Image.csv', read: async () => Promise.reject(new UnreadableTableError('s3://b/S8/Image.csv is missing')) }] };
    const garbled: GatherSet = { key: 'S9', metadata: {}, tables: [table('Image.csv', 'ImageNumber\n"unterminated\n')] };
    const ragged: GatherSet = { key: 'S10', metadata: {}, tables: [table('Image.csv', 'ImageNumber\n10,extra\n')] };
    const stats = await gatherTables([good(1), missing, garbled, ragged, good(2)], dir, { concurrency: 2 });
    expect(rows(path.join(dir, 'Image.csv'))).toEqual([{ ImageNumber: '1' }, { ImageNumber: '2' }]);
    expect(stats).toMatchObject({ sets: 5, setsSkipped: 3, firstSkipReason: 'S8: s3://b/S8/Image.csv is missing', rows: { 'Image.csv': 2 } });
    const outage: GatherSet = { key: 'S7', metadata: {}, tables: [{ name: 'Image.csv', read: async () => Promise.reject(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9000'), { code: 'ECONNREFUSED' })) }] };
    await expect(gatherTables([good(1), outage], path.join(dir, 'again'), { concurrency: 2 })).rejects.toThrow('ECONNREFUSED');
  });

  it('finds the end of a header with quoted newlines', () => {
    expect(endOfFirstRecord('a,"b\nc",d\n1,2,3\n')).toBe(10);
    expect(endOfFirstRecord('a,b')).toBe(3);
  });
});
