import { promises as fs } from 'fs';
import path from 'path';
import { stringify } from 'csv-stringify/sync';
import { ImageSetInputError, type EngineIdentity, type EngineImageSet, type EngineSetResult } from '../types';
import { decodeGrayscale, type GrayscaleImage } from './decode';
import type { BuiltinEngineOptions } from './engine';
import { measureObjects } from './measure';
import { DEFAULT_SEGMENTATION_OPTIONS, segmentNuclei } from './segment';

/**
 * The builtin engine's work on one image set: decode, segment, measure, write the tables. It runs in a
 * worker thread (thread.ts), never on the event loop of the process that heartbeats to Temporal: a
 * 10240² image takes tens of seconds here. The decoded pixels live and die in that thread; only file
 * names cross back.
 */

export interface SetTask {
  imageSet: EngineImageSet;
  /** ImageNumber written in the set's tables. */
  imageNumber: number;
  /** Options after the pipeline's and the caller's were merged. */
  settings: BuiltinEngineOptions;
  identity: EngineIdentity;
  /** The engine run's output folder; the set's tables go to `<outDir>/<key>/`. */
  outDir: string;
}

export async function analyseImageSet(task: SetTask, onProgress: (detail: string) => void = () => undefined): Promise<EngineSetResult> {
  const { imageSet, imageNumber, settings, identity } = task;
  const { key } = imageSet;
  const progress = (stage: string) => onProgress(`${key}: ${stage}`);
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

  progress(`segmenting ${nucleiChannel}`);
  const segmentation = segmentNuclei(nuclei.image, {
    minDiameter: settings.minDiameter ?? DEFAULT_SEGMENTATION_OPTIONS.minDiameter,
    maxDiameter: settings.maxDiameter ?? DEFAULT_SEGMENTATION_OPTIONS.maxDiameter,
    thresholdMethod: settings.thresholdMethod ?? DEFAULT_SEGMENTATION_OPTIONS.thresholdMethod,
  });

  progress('measuring');
  const { width, height } = first.image;
  const objectRows = measureObjects(
    segmentation.labels,
    segmentation.count,
    width,
    height,
    images.map(({ file, image }) => ({ name: file.channel, data: image.data })),
  );

  progress('writing tables');
  const objectName = settings.objectName ?? 'Nuclei';
  const imageRow = imageMeasurements(imageSet, imageNumber, objectName, segmentation.count, segmentation.threshold, images);
  const setDir = path.join(task.outDir, key);
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
