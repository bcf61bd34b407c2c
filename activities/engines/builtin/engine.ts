import { promises as fs } from 'fs';
import path from 'path';
import { stringify } from 'csv-stringify/sync';
import { CPFLOW_VERSION } from '../../../core/version';
import {
  ImageSetInputError,
  type Engine,
  type EngineIdentity,
  type EngineImageSet,
  type EngineRunInput,
  type EngineRunResult,
  type EngineSetResult,
} from '../types';
import { decodeGrayscale, type GrayscaleImage } from './decode';
import { measureObjects } from './measure';
import { builtinOptionsFromPipeline } from './pipeline-options';
import { DEFAULT_SEGMENTATION_OPTIONS, segmentNuclei, type ThresholdMethod } from './segment';

export interface BuiltinEngineOptions {
  /** Channel holding the nuclei stain; default `DNA` when the set has it, else the set's first channel. */
  nucleiChannel?: string;
  /** Smallest equivalent diameter (px) kept; default 8. */
  minDiameter?: number;
  /** Largest equivalent diameter (px) kept; default 80. */
  maxDiameter?: number;
  /** Name of the objects and of their table (`<objectName>.csv`); default `Nuclei`. */
  objectName?: string;
  /** Global threshold method; default minimum cross-entropy (as CellProfiler), or the pipeline's method. */
  thresholdMethod?: ThresholdMethod;
}

export const BUILTIN_ENGINE_NAME = 'builtin';
export const BUILTIN_ENGINE_VERSION = `cpflow-builtin ${CPFLOW_VERSION}`;

/**
 * The builtin engine: nucleus segmentation and measurement in TypeScript, writing CellProfiler
 * ExportToSpreadsheet-style tables. When the run input carries a CellProfiler pipeline, the channel,
 * object name, diameter range and threshold method of its first IdentifyPrimaryObjects module are used
 * unless `options` sets them explicitly.
 */
export function createBuiltinEngine(options: BuiltinEngineOptions = {}): Engine {
  const identity: EngineIdentity = { name: BUILTIN_ENGINE_NAME, version: BUILTIN_ENGINE_VERSION };
  return {
    identity: async () => identity,
    run: async (input: EngineRunInput): Promise<EngineRunResult> => {
      const deadline = input.timeoutMs !== undefined ? Date.now() + input.timeoutMs : undefined;
      const checkpoint = () => {
        if (input.signal?.aborted) throw abortError();
        if (deadline !== undefined && Date.now() > deadline) {
          const error = new Error(`builtin engine gave up after ${input.timeoutMs} ms`);
          error.name = 'TimeoutError';
          throw error;
        }
      };
      const fromPipeline = input.pipelinePath ? builtinOptionsFromPipeline(await readPipeline(input.pipelinePath)) : {};
      const settings: BuiltinEngineOptions = { ...fromPipeline, ...definedOnly(options) };
      const sets: EngineSetResult[] = [];
      for (const [index, imageSet] of input.imageSets.entries()) {
        checkpoint();
        sets.push(await runSet(imageSet, imageSet.imageNumber ?? index + 1, settings, identity, input, checkpoint));
      }
      return { engine: identity, sets };
    },
  };
}

async function runSet(
  imageSet: EngineImageSet,
  imageNumber: number,
  settings: BuiltinEngineOptions,
  identity: EngineIdentity,
  input: EngineRunInput,
  checkpoint: () => void,
): Promise<EngineSetResult> {
  const { key } = imageSet;
  const progress = (stage: string) => input.onProgress?.(`${key}: ${stage}`);
  if (!key || key.includes('/') || key.includes('\\') || key === '.' || key === '..') {
    throw new ImageSetInputError(`Image set key ${JSON.stringify(key)} cannot be used as a directory name`, key);
  }
  if (imageSet.files.length === 0) throw new ImageSetInputError(`Image set ${key} has no image files`, key);

  progress('decoding');
  const images = await Promise.all(
    imageSet.files.map(async (file) => {
      try {
        return { file, image: await decodeGrayscale(file.path) };
      } catch (err) {
        if (err instanceof ImageSetInputError) throw new ImageSetInputError(`Image set ${key}: ${err.message}`, key);
        throw err;
      }
    }),
  );
  const first = images[0];
  for (const { file, image } of images) {
    if (image.width !== first.image.width || image.height !== first.image.height) {
      throw new ImageSetInputError(
        `Image set ${key}: channel ${file.channel} (${file.path}) is ${image.width}x${image.height} but channel ` +
          `${first.file.channel} is ${first.image.width}x${first.image.height}`,
        key,
      );
    }
  }
  const nucleiChannel =
    settings.nucleiChannel ?? (images.some(({ file }) => file.channel === 'DNA') ? 'DNA' : first.file.channel);
  const nuclei = images.find(({ file }) => file.channel === nucleiChannel);
  if (!nuclei) {
    const available = images.map(({ file }) => file.channel).join(', ');
    throw new ImageSetInputError(`Image set ${key} has no channel ${nucleiChannel} to segment (has ${available})`, key);
  }
  checkpoint();

  progress(`segmenting ${nucleiChannel}`);
  const segmentation = segmentNuclei(nuclei.image, {
    minDiameter: settings.minDiameter ?? DEFAULT_SEGMENTATION_OPTIONS.minDiameter,
    maxDiameter: settings.maxDiameter ?? DEFAULT_SEGMENTATION_OPTIONS.maxDiameter,
    thresholdMethod: settings.thresholdMethod ?? DEFAULT_SEGMENTATION_OPTIONS.thresholdMethod,
  });
  checkpoint();

  progress('measuring');
  const { width, height } = first.image;
  const objectRows = measureObjects(
    segmentation.labels,
    segmentation.count,
    width,
    height,
    images.map(({ file, image }) => ({ name: file.channel, data: image.data })),
  );
  checkpoint();

  progress('writing tables');
  const objectName = settings.objectName ?? 'Nuclei';
  const imageRow = imageMeasurements(imageSet, imageNumber, objectName, segmentation.count, segmentation.threshold, images);
  const setDir = path.join(input.outDir, key);
  await fs.mkdir(setDir, { recursive: true });
  const objectTable = `${objectName}.csv`;
  await fs.writeFile(path.join(setDir, 'Image.csv'), toCsv([imageRow], ['ImageNumber']));
  await fs.writeFile(
    path.join(setDir, objectTable),
    toCsv(
      objectRows.map((row, i) => ({ ImageNumber: imageNumber, ObjectNumber: i + 1, ...row })),
      ['ImageNumber', 'ObjectNumber'],
      measurementColumns(images.map(({ file }) => file.channel)),
    ),
  );
  const experimentRows: Array<[string, string]> = [
    ['Engine', identity.name],
    ['Engine_Version', identity.version],
    ['Builtin_NucleiChannel', nucleiChannel],
    ['Builtin_ObjectName', objectName],
    ['Builtin_ThresholdMethod', settings.thresholdMethod ?? DEFAULT_SEGMENTATION_OPTIONS.thresholdMethod],
    ['Builtin_MinDiameter', String(settings.minDiameter ?? DEFAULT_SEGMENTATION_OPTIONS.minDiameter)],
    ['Builtin_MaxDiameter', String(settings.maxDiameter ?? DEFAULT_SEGMENTATION_OPTIONS.maxDiameter)],
  ];
  await fs.writeFile(path.join(setDir, 'Experiment.csv'), stringify(experimentRows, { header: true, columns: ['Key', 'Value'] }));
  progress(`done, ${segmentation.count} ${objectName}`);
  return { key, files: ['Image.csv', objectTable, 'Experiment.csv'] };
}

type CsvValue = string | number;

function imageMeasurements(
  imageSet: EngineImageSet,
  imageNumber: number,
  objectName: string,
  count: number,
  threshold: number,
  images: Array<{ file: { channel: string; path: string }; image: GrayscaleImage }>,
): Record<string, CsvValue> {
  const row: Record<string, CsvValue> = {
    ImageNumber: imageNumber,
    ImageSet_Key: imageSet.key,
    [`Count_${objectName}`]: count,
    [`Threshold_FinalThreshold_${objectName}`]: threshold,
  };
  for (const { file, image } of images) {
    row[`FileName_${file.channel}`] = path.basename(file.path);
    row[`PathName_${file.channel}`] = path.dirname(path.resolve(file.path));
    row[`Height_${file.channel}`] = image.height;
    row[`Width_${file.channel}`] = image.width;
  }
  for (const [name, value] of Object.entries(imageSet.metadata)) row[`Metadata_${name}`] = value;
  return row;
}

/** Object columns for a set with no objects, so an empty table still has CellProfiler's header. */
function measurementColumns(channels: string[]): string[] {
  const empty = measureObjects(new Int32Array(1).fill(1), 1, 1, 1, channels.map((name) => ({ name, data: new Float32Array(1) })));
  return Object.keys(empty[0]);
}

/**
 * CSV with the leading columns first and the rest sorted by name, as ExportToSpreadsheet orders them.
 * Numbers are written with JavaScript's locale-independent formatting; NaN/Infinity become empty cells.
 */
function toCsv(rows: Array<Record<string, CsvValue>>, leading: string[], knownColumns: string[] = []): string {
  const names = new Set<string>(knownColumns);
  for (const row of rows) for (const name of Object.keys(row)) names.add(name);
  for (const name of leading) names.delete(name);
  const columns = [...leading, ...[...names].sort()];
  return stringify(rows, {
    header: true,
    columns,
    cast: { number: (value) => (Number.isFinite(value) ? String(value) : '') },
  });
}

async function readPipeline(pipelinePath: string): Promise<string> {
  try {
    return await fs.readFile(pipelinePath, 'utf8');
  } catch (err) {
    throw new ImageSetInputError(`Pipeline ${pipelinePath} cannot be read: ${(err as Error).message}`);
  }
}

function definedOnly(options: BuiltinEngineOptions): BuiltinEngineOptions {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as BuiltinEngineOptions;
}

function abortError(): Error {
  const error = new Error('builtin engine run was aborted');
  error.name = 'AbortError';
  return error;
}
