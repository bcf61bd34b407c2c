import { promises as fs } from 'fs';
import sharp from 'sharp';
import { ImageSetInputError } from '../types';

/** A single-channel image with intensities scaled to [0,1], row-major (index = y * width + x). */
export interface GrayscaleImage {
  width: number;
  height: number;
  data: Float32Array;
  /** Bits per sample of the stored file (8 or 16); decides the divisor used for scaling. */
  bitDepth: 8 | 16;
}

/**
 * Decodes an 8- or 16-bit grayscale TIFF or PNG into [0,1] floats, dividing by 255 or 65535 as
 * CellProfiler does for integer images. Any problem with the file itself (missing, empty, not an
 * image, unsupported sample type) is an ImageSetInputError naming the file, so the caller fails the
 * image set without retrying.
 */
export async function decodeGrayscale(filePath: string): Promise<GrayscaleImage> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(filePath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? String(err)})`;
    throw new ImageSetInputError(`Image file ${filePath} ${reason}`);
  }
  if (bytes.length === 0) throw new ImageSetInputError(`Image file ${filePath} is empty (0 bytes)`);

  let depth: string | undefined;
  try {
    depth = (await sharp(bytes).metadata()).depth;
  } catch (err) {
    throw new ImageSetInputError(`Image file ${filePath} cannot be decoded as TIFF or PNG: ${errorMessage(err)}`);
  }

  try {
    if (depth === 'uchar') {
      // sharp hands grayscale out as 3 channels unless one is extracted explicitly.
      const { data, info } = await sharp(bytes).extractChannel(0).raw().toBuffer({ resolveWithObject: true });
      const out = new Float32Array(info.width * info.height);
      for (let i = 0; i < out.length; i++) out[i] = data[i] / 255;
      return { width: info.width, height: info.height, data: out, bitDepth: 8 };
    }
    if (depth === 'ushort') {
      // 'grey16' keeps 16-bit samples as they are; extractChannel alone would reduce them to 8 bits.
      const { data, info } = await sharp(bytes)
        .toColourspace('grey16')
        .raw({ depth: 'ushort' })
        .toBuffer({ resolveWithObject: true });
      if (info.channels !== 1) throw new Error(`expected 1 channel after grey16 conversion, got ${info.channels}`);
      const samples = new Uint16Array(data.buffer, data.byteOffset, data.length / 2);
      const out = new Float32Array(info.width * info.height);
      for (let i = 0; i < out.length; i++) out[i] = samples[i] / 65535;
      return { width: info.width, height: info.height, data: out, bitDepth: 16 };
    }
  } catch (err) {
    throw new ImageSetInputError(`Image file ${filePath} cannot be decoded: ${errorMessage(err)}`);
  }
  throw new ImageSetInputError(
    `Image file ${filePath} has unsupported sample type ${depth ?? 'unknown'} (only 8- and 16-bit integer images are supported)`,
  );
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
