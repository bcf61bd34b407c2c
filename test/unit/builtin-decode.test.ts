import { promises as fs } from 'fs';
import os from 'os';
import path from 'path';
import sharp from 'sharp';
import { decodeGrayscale } from '../../activities/engines/builtin';
import { ImageSetInputError } from '../../activities/engines/types';

// Image generation and segmentation share two cores with other suites; allow for a slow machine.
jest.setTimeout(60_000);

const WIDTH = 37; // odd width: catches row-stride mistakes
const HEIGHT = 23;

/** A pattern that uses the full 16-bit range and differs in every pixel. */
function pattern16(): Uint16Array {
  const samples = new Uint16Array(WIDTH * HEIGHT);
  for (let i = 0; i < samples.length; i++) samples[i] = (i * 2711 + (i % 7) * 9001) % 65536;
  samples[0] = 0;
  samples[1] = 65535;
  return samples;
}

/** Minimal uncompressed little-endian 16-bit grayscale TIFF, written by hand as an independent encoder. */
function handWrittenTiff16(samples: Uint16Array, width: number, height: number): Buffer {
  const entries: Array<[tag: number, type: number, value: number]> = [
    [256, 3, width],
    [257, 3, height],
    [258, 3, 16],
    [259, 3, 1],
    [262, 3, 1],
    [273, 4, 0], // strip offset, patched below
    [277, 3, 1],
    [278, 3, height],
    [279, 4, samples.length * 2],
  ];
  const ifdOffset = 8;
  const ifdSize = 2 + entries.length * 12 + 4;
  const dataOffset = ifdOffset + ifdSize;
  const buffer = Buffer.alloc(dataOffset + samples.length * 2);
  buffer.write('II', 0, 'latin1');
  buffer.writeUInt16LE(42, 2);
  buffer.writeUInt32LE(ifdOffset, 4);
  buffer.writeUInt16LE(entries.length, ifdOffset);
  entries.forEach(([tag, type, value], i) => {
    const at = ifdOffset + 2 + i * 12;
    buffer.writeUInt16LE(tag, at);
    buffer.writeUInt16LE(type, at + 2);
    buffer.writeUInt32LE(1, at + 4);
    const v = tag === 273 ? dataOffset : value;
    if (type === 3) buffer.writeUInt16LE(v, at + 8);
    else buffer.writeUInt32LE(v, at + 8);
  });
  samples.forEach((s, i) => buffer.writeUInt16LE(s, dataOffset + i * 2));
  return buffer;
}

/** Reads the TIFF Compression tag (259) of the first IFD of a little-endian TIFF. */
function tiffCompressionTag(bytes: Buffer): number {
  expect(bytes.toString('latin1', 0, 2)).toBe('II');
  const ifd = bytes.readUInt32LE(4);
  const count = bytes.readUInt16LE(ifd);
  for (let i = 0; i < count; i++) {
    const at = ifd + 2 + i * 12;
    if (bytes.readUInt16LE(at) === 259) return bytes.readUInt16LE(at + 8);
  }
  throw new Error('no compression tag');
}

let root: string;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'cpflow-decode-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

const TIFF_COMPRESSION_CODES = { none: 1, lzw: 5, deflate: 8, packbits: 32773 } as const;

describe('decodeGrayscale', () => {
  const samples16 = pattern16();
  const samples8 = Uint8Array.from(samples16, (s) => s >> 8);

  it('reads a hand-written 16-bit TIFF as samples / 65535', async () => {
    const file = path.join(root, 'hand.tif');
    await fs.writeFile(file, handWrittenTiff16(samples16, WIDTH, HEIGHT));
    const image = await decodeGrayscale(file);
    expect([image.width, image.height, image.bitDepth]).toEqual([WIDTH, HEIGHT, 16]);
    expect(image.data[0]).toBe(0);
    expect(image.data[1]).toBe(1);
    for (let i = 0; i < samples16.length; i++) expect(image.data[i]).toBeCloseTo(samples16[i] / 65535, 6);
  });

  it.each(Object.keys(TIFF_COMPRESSION_CODES) as Array<keyof typeof TIFF_COMPRESSION_CODES>)(
    'reads 8- and 16-bit TIFF with %s compression and PNG to the same values',
    async (compression) => {
      const tif16 = path.join(root, `c16-${compression}.tif`);
      const tif8 = path.join(root, `c8-${compression}.tif`);
      const png16 = path.join(root, 'p16.png');
      const png8 = path.join(root, 'p8.png');
      const raw = { raw: { width: WIDTH, height: HEIGHT, channels: 1 as const } };
      await sharp(samples16, raw).toColourspace('grey16').tiff({ compression }).toFile(tif16);
      await sharp(samples8, raw).toColourspace('b-w').tiff({ compression }).toFile(tif8);
      await sharp(samples16, raw).toColourspace('grey16').png().toFile(png16);
      await sharp(samples8, raw).toColourspace('b-w').png().toFile(png8);
      // The files really use the compression under test.
      expect(tiffCompressionTag(await fs.readFile(tif16))).toBe(TIFF_COMPRESSION_CODES[compression]);
      expect(tiffCompressionTag(await fs.readFile(tif8))).toBe(TIFF_COMPRESSION_CODES[compression]);

      const [t16, t8, p16, p8] = await Promise.all([tif16, tif8, png16, png8].map(decodeGrayscale));
      expect([t16.bitDepth, p16.bitDepth, t8.bitDepth, p8.bitDepth]).toEqual([16, 16, 8, 8]);
      for (let i = 0; i < samples16.length; i++) {
        expect(t16.data[i]).toBeCloseTo(samples16[i] / 65535, 6);
        expect(p16.data[i]).toBe(t16.data[i]);
        expect(t8.data[i]).toBeCloseTo(samples8[i] / 255, 6);
        expect(p8.data[i]).toBe(t8.data[i]);
        // 8-bit keeps the high byte, so it agrees with the 16-bit reading to within one 8-bit step.
        expect(Math.abs(t8.data[i] - t16.data[i])).toBeLessThan(1 / 255 + 1e-6);
      }
    },
  );

  it('fails a missing file with ImageSetInputError naming it', async () => {
    const file = path.join(root, 'nope', 'missing.tif');
    await expect(decodeGrayscale(file)).rejects.toThrow(ImageSetInputError);
    await expect(decodeGrayscale(file)).rejects.toThrow(/missing\.tif does not exist/);
  });

  it('fails an empty file with ImageSetInputError naming it', async () => {
    const file = path.join(root, 'empty.tif');
    await fs.writeFile(file, Buffer.alloc(0));
    await expect(decodeGrayscale(file)).rejects.toThrow(ImageSetInputError);
    await expect(decodeGrayscale(file)).rejects.toThrow(/empty\.tif is empty/);
  });

  it('fails garbage bytes and a truncated TIFF with ImageSetInputError naming the file', async () => {
    const garbage = path.join(root, 'garbage.tif');
    await fs.writeFile(garbage, Buffer.from('this is not an image at all, just text'.repeat(20)));
    await expect(decodeGrayscale(garbage)).rejects.toThrow(ImageSetInputError);
    await expect(decodeGrayscale(garbage)).rejects.toThrow(/garbage\.tif cannot be decoded/);

    const truncated = path.join(root, 'truncated.tif');
    const whole = handWrittenTiff16(samples16, WIDTH, HEIGHT);
    await fs.writeFile(truncated, whole.subarray(0, 120));
    await expect(decodeGrayscale(truncated)).rejects.toThrow(ImageSetInputError);
    await expect(decodeGrayscale(truncated)).rejects.toThrow(/truncated\.tif/);
  });
});
