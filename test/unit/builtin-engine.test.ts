import { promises as fs } from 'fs';
import os from 'os';
import path from 'path';
import { parse } from 'csv-parse/sync';
import sharp from 'sharp';
import packageJson from '../../package.json';
import { createBuiltinEngine, builtinOptionsFromPipeline } from '../../activities/engines/builtin';
import { ImageSetInputError, type EngineImageSet } from '../../activities/engines/types';
import { generateSyntheticPlate, type GroundTruth } from '../fixtures/synthetic-plate';
import { EXAMPLE_HUMAN } from '../support/fixtures';

// Image generation and segmentation share two cores with other suites; allow for a slow machine.
jest.setTimeout(60_000);

type Row = Record<string, string>;
const readCsv = async (file: string): Promise<Row[]> => parse(await fs.readFile(file), { columns: true });
const readHeader = async (file: string): Promise<string[]> =>
  (await fs.readFile(file, 'utf8')).split('\n', 1)[0].split(',');

let root: string;
let plateDir: string;
let truth: GroundTruth;
let sets: EngineImageSet[];

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'cpflow-engine-'));
  plateDir = path.join(root, 'plate');
  truth = await generateSyntheticPlate({ outDir: plateDir, rows: 1, cols: 2, seed: 77, bitDepth: 16, compression: 'deflate' });
  sets = truth.sets.map((set) => ({
    key: set.key,
    metadata: { Plate: set.plate, Well: set.well, Site: String(set.site) },
    files: Object.entries(set.files).map(([channel, file]) => ({ channel, path: path.join(plateDir, file) })),
  }));
}, 30_000);
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function freshDirs(name: string) {
  const outDir = path.join(root, name, 'out');
  const tmpDir = path.join(root, name, 'tmp');
  await fs.mkdir(outDir, { recursive: true });
  await fs.mkdir(tmpDir, { recursive: true });
  return { outDir, tmpDir };
}

describe('builtin engine', () => {
  it('names itself builtin with the package version', async () => {
    expect(await createBuiltinEngine().identity()).toEqual({
      name: 'builtin',
      version: `cpflow-builtin ${packageJson.version}`,
    });
  });

  it('writes ExportToSpreadsheet-style tables per image set', async () => {
    const dirs = await freshDirs('tables');
    const progress: string[] = [];
    const result = await createBuiltinEngine().run({ imageSets: sets, ...dirs, onProgress: (d) => progress.push(d) });
    expect(result.engine.name).toBe('builtin');
    expect(result.sets.map((s) => s.key)).toEqual(truth.sets.map((s) => s.key));
    expect(progress.some((line) => line.startsWith(`${sets[0].key}: segmenting DNA`))).toBe(true);

    for (const [index, set] of truth.sets.entries()) {
      const setDir = path.join(dirs.outDir, set.key);
      expect(result.sets[index].files.sort()).toEqual(['Experiment.csv', 'Image.csv', 'Nuclei.csv']);
      const [image] = await readCsv(path.join(setDir, 'Image.csv'));
      const nuclei = await readCsv(path.join(setDir, 'Nuclei.csv'));
      expect(image.ImageNumber).toBe(String(index + 1));
      expect(image.ImageSet_Key).toBe(set.key);
      expect(Number(image.Count_Nuclei)).toBe(nuclei.length);
      expect(Math.abs(nuclei.length - set.nucleusCount)).toBeLessThanOrEqual(1);
      expect(image.FileName_DNA).toBe(set.files.DNA);
      expect(image.FileName_Actin).toBe(set.files.Actin);
      expect(image.PathName_DNA).toBe(plateDir);
      expect([image.Width_DNA, image.Height_Actin]).toEqual(['256', '256']);
      expect([image.Metadata_Plate, image.Metadata_Well, image.Metadata_Site]).toEqual([set.plate, set.well, '1']);
      const threshold = Number(image.Threshold_FinalThreshold_Nuclei);
      expect(threshold).toBeGreaterThan(0);
      expect(threshold).toBeLessThan(1);

      const header = await readHeader(path.join(setDir, 'Nuclei.csv'));
      expect(header.slice(0, 2)).toEqual(['ImageNumber', 'ObjectNumber']);
      for (const column of [
        'AreaShape_Area', 'AreaShape_Center_X', 'AreaShape_Center_Y', 'Location_Center_X', 'Location_Center_Y',
        'AreaShape_BoundingBoxMinimum_X', 'AreaShape_BoundingBoxMaximum_Y', 'AreaShape_EquivalentDiameter',
        'Intensity_MeanIntensity_DNA', 'Intensity_IntegratedIntensity_Actin', 'Intensity_MaxIntensity_Actin',
      ]) {
        expect(header).toContain(column);
      }
      nuclei.forEach((row, i) => {
        expect(row.ImageNumber).toBe(String(index + 1));
        expect(row.ObjectNumber).toBe(String(i + 1));
        const area = Number(row.AreaShape_Area);
        expect(Number(row.Intensity_IntegratedIntensity_DNA)).toBeCloseTo(area * Number(row.Intensity_MeanIntensity_DNA), 6);
        // Nuclei are brighter in DNA than the cytoplasm-like Actin glow, and both are on the [0,1] scale.
        expect(Number(row.Intensity_MeanIntensity_DNA)).toBeGreaterThan(Number(row.Intensity_MeanIntensity_Actin));
        expect(Number(row.Intensity_MaxIntensity_DNA)).toBeLessThanOrEqual(1);
        expect(row.AreaShape_Center_X).toBe(row.Location_Center_X);
      });
      // Every drawn nucleus centre lies inside exactly one reported bounding box region.
      const boxes = nuclei.map((row) => ({
        minX: Number(row.AreaShape_BoundingBoxMinimum_X), maxX: Number(row.AreaShape_BoundingBoxMaximum_X),
        minY: Number(row.AreaShape_BoundingBoxMinimum_Y), maxY: Number(row.AreaShape_BoundingBoxMaximum_Y),
      }));
      const covered = set.nuclei.filter((n) => boxes.some((b) => n.x >= b.minX && n.x < b.maxX && n.y >= b.minY && n.y < b.maxY));
      expect(covered.length).toBe(set.nucleusCount);

      const experiment = Object.fromEntries((await readCsv(path.join(setDir, 'Experiment.csv'))).map((r) => [r.Key, r.Value]));
      expect(experiment.Engine).toBe('builtin');
      expect(experiment.Engine_Version).toBe(`cpflow-builtin ${packageJson.version}`);
      expect(experiment.Builtin_NucleiChannel).toBe('DNA');
    }
  }, 60_000);

  it('honours the object name and nuclei channel options', async () => {
    const dirs = await freshDirs('options');
    const result = await createBuiltinEngine({ objectName: 'Blobs', nucleiChannel: 'Actin' }).run({ imageSets: [sets[0]], ...dirs });
    expect(result.sets[0].files).toContain('Blobs.csv');
    const [image] = await readCsv(path.join(dirs.outDir, sets[0].key, 'Image.csv'));
    expect(image).toHaveProperty('Count_Blobs');
    expect(image).toHaveProperty('Threshold_FinalThreshold_Blobs');
    const experiment = await readCsv(path.join(dirs.outDir, sets[0].key, 'Experiment.csv'));
    expect(experiment).toContainEqual({ Key: 'Builtin_NucleiChannel', Value: 'Actin' });
  }, 30_000);

  it('fails a set with a missing, empty or undecodable image as ImageSetInputError naming file and set', async () => {
    const empty = path.join(root, 'empty.tif');
    const garbage = path.join(root, 'garbage.tif');
    await fs.writeFile(empty, Buffer.alloc(0));
    await fs.writeFile(garbage, Buffer.from('GIF89a but not really'.repeat(10)));
    for (const bad of [path.join(root, 'missing.tif'), empty, garbage]) {
      const dirs = await freshDirs(`bad-${path.basename(bad)}`);
      const broken: EngineImageSet = { ...sets[0], files: [sets[0].files[0], { channel: 'Actin', path: bad }] };
      const run = createBuiltinEngine().run({ imageSets: [broken], ...dirs });
      await expect(run).rejects.toBeInstanceOf(ImageSetInputError);
      await expect(createBuiltinEngine().run({ imageSets: [broken], ...dirs })).rejects.toMatchObject({
        setKey: broken.key,
        message: expect.stringContaining(bad),
      });
    }
  }, 30_000);

  it('fails a set whose channels differ in size', async () => {
    const small = path.join(root, 'small.tif');
    await sharp(new Uint8Array(64 * 64).fill(20), { raw: { width: 64, height: 64, channels: 1 } }).toColourspace('b-w').tiff().toFile(small);
    const dirs = await freshDirs('sizes');
    const mixed: EngineImageSet = { ...sets[0], files: [sets[0].files[0], { channel: 'Actin', path: small }] };
    await expect(createBuiltinEngine().run({ imageSets: [mixed], ...dirs })).rejects.toThrow(/Actin.*64x64.*256x256/);
  });

  it('fails when the requested nuclei channel is absent', async () => {
    const dirs = await freshDirs('nochannel');
    await expect(createBuiltinEngine({ nucleiChannel: 'Hoechst' }).run({ imageSets: [sets[0]], ...dirs })).rejects.toThrow(
      ImageSetInputError,
    );
  });

  it('stops when aborted', async () => {
    const dirs = await freshDirs('abort');
    const controller = new AbortController();
    controller.abort();
    await expect(createBuiltinEngine().run({ imageSets: sets, ...dirs, signal: controller.signal })).rejects.toMatchObject({
      name: 'AbortError',
    });
    expect(await fs.readdir(dirs.outDir)).toEqual([]);
  });

  it('reads settings from a pipeline file, explicit options winning', async () => {
    const pipeline = path.join(root, 'p.cppipe');
    await fs.writeFile(
      pipeline,
      [
        'CellProfiler Pipeline: http://www.cellprofiler.org',
        'Version:5',
        '',
        "IdentifyPrimaryObjects:[module_num:5|svn_version:'Unknown'|variable_revision_number:14]",
        '    Select the input image:Actin',
        '    Name the primary objects to be identified:Speckles',
        '    Typical diameter of objects, in pixel units (Min,Max):10,60',
        '    Thresholding method:Otsu',
        '',
      ].join('\n'),
    );
    expect(builtinOptionsFromPipeline(await fs.readFile(pipeline, 'utf8'))).toEqual({
      nucleiChannel: 'Actin', objectName: 'Speckles', minDiameter: 10, maxDiameter: 60, thresholdMethod: 'otsu',
    });
    expect(builtinOptionsFromPipeline('not a pipeline')).toEqual({});
    const dirs = await freshDirs('pipeline');
    const result = await createBuiltinEngine({ nucleiChannel: 'DNA' }).run({ imageSets: [sets[0]], pipelinePath: pipeline, ...dirs });
    expect(result.sets[0].files).toContain('Speckles.csv');
    const experiment = Object.fromEntries(
      (await readCsv(path.join(dirs.outDir, sets[0].key, 'Experiment.csv'))).map((r) => [r.Key, r.Value]),
    );
    expect(experiment).toMatchObject({ Builtin_NucleiChannel: 'DNA', Builtin_MinDiameter: '10', Builtin_ThresholdMethod: 'otsu' });
  }, 30_000);
});


describe('builtin engine on ExampleHuman', () => {
  it('counts nuclei close to CellProfiler and measures every channel', async () => {
    const images = path.join(EXAMPLE_HUMAN, 'images');
    const dirs = await freshDirs('examplehuman');
    const set: EngineImageSet = {
      key: 'EH-D03-f00',
      metadata: { Well: 'D03', Site: '0' },
      files: [
        { channel: 'DNA', path: path.join(images, 'AS_09125_050116030001_D03f00d0.tif') },
        { channel: 'PH3', path: path.join(images, 'AS_09125_050116030001_D03f00d1.tif') },
        { channel: 'cellbody', path: path.join(images, 'AS_09125_050116030001_D03f00d2.tif') },
      ],
    };
    await createBuiltinEngine().run({ imageSets: [set], pipelinePath: path.join(EXAMPLE_HUMAN, 'ExampleHuman.cppipe'), ...dirs });
    const [image] = await readCsv(path.join(dirs.outDir, set.key, 'Image.csv'));
    const [reference] = await readCsv(path.join(EXAMPLE_HUMAN, 'reference-output', 'Image.csv'));
    const count = Number(image.Count_Nuclei);
    // Within 2% of CellProfiler's 289 (measured: 290).
    expect(Math.abs(count - Number(reference.Count_Nuclei)) / Number(reference.Count_Nuclei)).toBeLessThanOrEqual(0.02);
    const header = await readHeader(path.join(dirs.outDir, set.key, 'Nuclei.csv'));
    for (const channel of ['DNA', 'PH3', 'cellbody']) expect(header).toContain(`Intensity_MeanIntensity_${channel}`);
  }, 30_000);
});
