import { Readable } from 'node:stream';
import { CsvError, forEachCsvRecord, parseCsvObjects, parseCsvText } from '../../core/csv';

/** A stream of `text` in chunks of `size` bytes, so records, quotes and characters straddle chunks. */
function chunked(text: string, size: number): Readable {
  const bytes = Buffer.from(text, 'utf8');
  const chunks: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.subarray(i, i + size));
  return Readable.from(chunks);
}

async function records(source: Readable, delimiter?: string): Promise<{ records: string[][]; rows: number }> {
  const seen: string[][] = [];
  const rows = await forEachCsvRecord(source, (record) => void seen.push(record), delimiter ? { delimiter } : {});
  return { records: seen, rows };
}

describe('forEachCsvRecord', () => {
  it('reads quoted fields, doubled quotes, quoted line breaks and multi-byte characters across chunk boundaries', async () => {
    const text = '\ufeffImageNumber,FileName_DNA,Note\r\n1,"ä b,c.tif","say ""hi""\r\nagain"\r\n\r\n2,µm.tif,plain\r\n';
    for (const size of [1, 2, 3, 7, 1024]) {
      const { records: got, rows } = await records(chunked(text, size));
      expect(got).toEqual([
        ['ImageNumber', 'FileName_DNA', 'Note'],
        ['1', 'ä b,c.tif', 'say "hi"\r\nagain'],
        ['2', 'µm.tif', 'plain'],
      ]);
      expect(rows).toBe(2);
    }
  });

  it('takes the delimiter it is given, and a one-column table', async () => {
    expect((await records(chunked('a\tb\n1\t2\n', 3), '\t')).records).toEqual([['a', 'b'], ['1', '2']]);
    expect((await records(chunked('ImageNumber\n1\n2\n', 4))).records).toEqual([['ImageNumber'], ['1'], ['2']]);
  });

  it('refuses an unterminated quote and a row with another number of fields than the header', async () => {
    await expect(records(chunked('a,b\n1,"2\n', 3))).rejects.toThrow(CsvError);
    await expect(records(chunked('a,b\n1,2,3\n', 3))).rejects.toThrow(/record 2: 3 fields, the header has 2/);
  });

  it('pauses for a callback that returns a promise, keeping records in order', async () => {
    const lines = Array.from({ length: 2_000 }, (_, i) => `${i},${'x'.repeat(i % 50)}`);
    const seen: string[] = [];
    let inCallback = 0;
    let overlapped = false;
    const rows = await forEachCsvRecord(chunked(`n,pad\n${lines.join('\n')}\n`, 97), (record, index) => {
      if (inCallback > 0) overlapped = true;
      seen.push(record[0] ?? '');
      if (index % 100 !== 0) return undefined;
      inCallback++;
      return new Promise<void>((resolve) => setTimeout(() => {
        inCallback--;
        resolve();
      }, 1));
    });
    expect(rows).toBe(2_000);
    expect(overlapped).toBe(false);
    expect(seen).toEqual(['n', ...lines.map((_, i) => String(i))]);
  });

  it("rejects with the callback's error and the source's error", async () => {
    await expect(forEachCsvRecord(chunked('a\n1\n', 2), (_, i) => { if (i === 1) throw new Error('boom'); })).rejects.toThrow('boom');
    const broken = new Readable({ read() { this.destroy(new Error('S3 went away')); } });
    await expect(forEachCsvRecord(broken, () => undefined)).rejects.toThrow('S3 went away');
  });
});

describe('parseCsvText', () => {
  it('reads a whole text with the same rules, trimming when asked', () => {
    expect(parseCsvText('\ufeffWell, dose \r\nA01,"1,5"\r\n\r\n', { trim: true })).toEqual([['Well', 'dose'], ['A01', '1,5']]);
    expect(parseCsvObjects('a,b\n1,2\n3,4\n')).toEqual([{ a: '1', b: '2' }, { a: '3', b: '4' }]);
  });

  it('refuses malformed quotes and odd rows unless told to accept them', () => {
    expect(() => parseCsvText('a,b\n1,"2\n')).toThrow(CsvError);
    expect(() => parseCsvText('a,b\n1,2\n3\n')).toThrow(/record 3: 1 fields, the header has 2/);
    expect(parseCsvText('a,b\n1,2\n3\n', { relaxColumnCount: true })).toEqual([['a', 'b'], ['1', '2'], ['3']]);
  });
});
