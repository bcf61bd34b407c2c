import fs from 'node:fs';
import sharp from 'sharp';
import { imageLimitsConfig, type ImageLimitsConfig } from './config';

/**
 * The per-image size limits (CPFLOW_MAX_IMAGE_PIXELS, CPFLOW_MAX_IMAGE_BYTES), checked from the file's
 * size and its header alone: the declared width and height are read without decoding a pixel (libvips
 * reads the header in its own thread), so a file declaring 23170 × 23170 pixels is refused in
 * milliseconds instead of being decoded into gigabytes on the worker's event loop.
 */

export interface ImageHeader {
  width: number;
  height: number;
  /** Planes (TIFF pages); the engines read the first. */
  pages: number;
  format: string;
}

/** The image's header, or undefined when it cannot be read as an image (the engine then says why). */
export async function readImageHeader(file: string): Promise<ImageHeader | undefined> {
  try {
    // limitInputPixels: false lets the header of an oversized image be read, so we can name its size.
    const m = await sharp(file, { limitInputPixels: false }).metadata();
    if (!m.width || !m.height) return undefined;
    return { width: m.width, height: m.height, pages: m.pages ?? 1, format: m.format ?? 'unknown' };
  } catch {
    return undefined;
  }
}

const megapixels = (pixels: number): string => `${(pixels / 1_000_000).toFixed(1)} Mpx`;
const mebibytes = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/** Why a file of `bytes` bytes exceeds the limits, or undefined. */
export function sizeProblem(bytes: number, limits: ImageLimitsConfig = imageLimitsConfig()): string | undefined {
  if (bytes <= limits.CPFLOW_MAX_IMAGE_BYTES) return undefined;
  return `is ${mebibytes(bytes)}, above the limit of ${mebibytes(limits.CPFLOW_MAX_IMAGE_BYTES)} per image (CPFLOW_MAX_IMAGE_BYTES)`;
}

/** Why an image of this header exceeds the pixel limit, or undefined. */
export function pixelProblem(header: ImageHeader, limits: ImageLimitsConfig = imageLimitsConfig()): string | undefined {
  const pixels = header.width * header.height;
  if (pixels <= limits.CPFLOW_MAX_IMAGE_PIXELS) return undefined;
  return (
    `is ${header.width}×${header.height} pixels (${megapixels(pixels)}), above the limit of ` +
    `${megapixels(limits.CPFLOW_MAX_IMAGE_PIXELS)} per image (CPFLOW_MAX_IMAGE_PIXELS)`
  );
}

/** Both checks on a local file: the reason it is refused, or undefined when it is within the limits. */
export async function imageLimitProblem(file: string, limits: ImageLimitsConfig = imageLimitsConfig()): Promise<string | undefined> {
  const { size } = await fs.promises.stat(file);
  const bySize = sizeProblem(size, limits);
  if (bySize) return bySize;
  const header = await readImageHeader(file);
  return header ? pixelProblem(header, limits) : undefined;
}
