import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { parseCppipe, pipelineSha256, PipelineError, type Pipeline } from '../../core/pipeline/cppipe';
import { spreadsheetFilePrefix, validatePipelineForCpflow } from '../../core/pipeline/validate';
import { EXAMPLE_HUMAN } from '../support/fixtures';

const EXAMPLE_PATH = path.join(EXAMPLE_HUMAN, 'ExampleHuman.cppipe');
const example = fs.readFileSync(EXAMPLE_PATH, 'utf8');

/** Runs `fn`, expects a PipelineError, and returns it for further checks. */
function pipelineError(fn: () => unknown): PipelineError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(PipelineError);
    return err as PipelineError;
  }
  throw new Error('expected a PipelineError, but nothing was thrown');
}

/** Removes one module block (header line up to the blank line after it) from the pipeline text. */
function withoutModule(text: string, name: string): string {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.startsWith(`${name}:[`));
  if (start < 0) throw new Error(`module ${name} not in test pipeline`);
  let end = start + 1;
  while (end < lines.length && lines[end].trim() !== '') end++;
  return [...lines.slice(0, start), ...lines.slice(end + 1)].join('\n');
}

describe('parseCppipe on ExampleHuman.cppipe', () => {
  let pipeline: Pipeline;
  beforeAll(() => {
    pipeline = parseCppipe(example, 'ExampleHuman.cppipe');
  });

  it('reads the header', () => {
    expect(pipeline.version).toBe(5);
    expect(pipeline.dateRevision).toBe(400);
    expect(pipeline.gitHash).toBe('');
    expect(pipeline.moduleCount).toBe(14);
    expect(pipeline.hasImagePlaneDetails).toBe(false);
  });

  it('reads the 14 modules in order with their numbers and attributes', () => {
    expect(pipeline.modules.map((m) => m.name)).toEqual([
      'Images',
      'Metadata',
      'NamesAndTypes',
      'Groups',
      'IdentifyPrimaryObjects',
      'IdentifyPrimaryObjects',
      'RelateObjects',
      'IdentifySecondaryObjects',
      'IdentifyTertiaryObjects',
      'MeasureObjectIntensity',
      'MeasureObjectSizeShape',
      'OverlayOutlines',
      'SaveImages',
      'ExportToSpreadsheet',
    ]);
    expect(pipeline.modules.map((m) => m.moduleNum)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    const nat = pipeline.modules[2];
    expect(nat.attributes.variable_revision_number).toBe('8');
    // The notes attribute is a Python list literal; it must stay one attribute.
    expect(nat.attributes.notes).toContain("'PH3: An antibody for phosphorylated histone H3 correlated with mitosis'");
    expect(nat.enabled).toBe(true);
  });

  it('keeps settings in order, duplicates included, and splits each at the first colon only', () => {
    const nat = pipeline.modules[2];
    expect(nat.settings.filter((s) => s.text === 'Name to assign these images').map((s) => s.value)).toEqual([
      'DNA',
      'DNA',
      'PH3',
      'cellbody',
    ]);
    const primary = pipeline.modules[4];
    const diameter = primary.settings.find((s) => s.text.startsWith('Typical diameter'));
    expect(diameter).toEqual({ text: 'Typical diameter of objects, in pixel units (Min,Max)', value: '8,80' });
    // Images' first setting has an empty text and value (`    :`).
    expect(pipeline.modules[0].settings[0]).toEqual({ text: '', value: '' });
    // Count equals the indented lines of the block in the file.
    const lines = example.split('\n');
    const start = lines.findIndex((l) => l.startsWith('IdentifyPrimaryObjects:['));
    let n = 0;
    while (lines[start + 1 + n]?.startsWith('    ')) n++;
    expect(primary.settings).toHaveLength(n);
  });

  it('keeps a pipe inside notes within the notes attribute', () => {
    const text = example.replace("notes:['DNA: DNA stained with DAPI'", "notes:['DNA | Hoechst: stained with DAPI'");
    const nat = parseCppipe(text).modules[2];
    expect(nat.attributes.notes).toContain('DNA | Hoechst');
    expect(nat.attributes.enabled).toBe('True');
    expect(nat.attributes.wants_pause).toBe('False');
  });

  it('accepts CRLF line endings and a BOM the same way', () => {
    const crlf = parseCppipe(`\uFEFF${example.replace(/\n/g, '\r\n')}`, 'crlf.cppipe');
    expect(crlf.modules.map((m) => [m.name, m.settings.length])).toEqual(
      pipeline.modules.map((m) => [m.name, m.settings.length]),
    );
  });
});

describe('validatePipelineForCpflow', () => {
  it('finds ExampleHuman channels DNA, PH3, cellbody and its objects', () => {
    const info = validatePipelineForCpflow(parseCppipe(example, 'ExampleHuman.cppipe'));
    expect(info.channels).toEqual(['DNA', 'PH3', 'cellbody']);
    expect(info.objects).toEqual(['Nuclei', 'PH3', 'Cells', 'Cytoplasm']);
    expect(info.exportsSpreadsheet).toBe(true);
  });

  it('uses the single name when NamesAndTypes assigns one name to all images', () => {
    const allImages = example
      .replace('Assign a name to:Images matching rules', 'Assign a name to:All images')
      .replace(/(Select the image type:Grayscale image\n    Name to assign these images:)DNA/, '$1Hoechst');
    expect(validatePipelineForCpflow(parseCppipe(allImages)).channels).toEqual(['Hoechst']);
  });

  it('reports objects loaded by NamesAndTypes as objects, not channels', () => {
    const text = example.replace(
      'Name to assign these images:cellbody\n    Name to assign these objects:Cell\n    Select the image type:Grayscale image',
      'Name to assign these images:cellbody\n    Name to assign these objects:CellMasks\n    Select the image type:Objects',
    );
    const info = validatePipelineForCpflow(parseCppipe(text));
    expect(info.channels).toEqual(['DNA', 'PH3']);
    expect(info.objects[0]).toBe('CellMasks');
  });

  it('ignores objects of disabled modules', () => {
    const text = example.replace(
      /(IdentifyTertiaryObjects:\[[^\n]*)enabled:True/,
      '$1enabled:False',
    );
    expect(validatePipelineForCpflow(parseCppipe(text)).objects).toEqual(['Nuclei', 'PH3', 'Cells']);
  });

  it('accepts a pipeline without ExportToSpreadsheet: its results are the files it saves', () => {
    const text = withoutModule(example, 'ExportToSpreadsheet').replace('ModuleCount:14', 'ModuleCount:13');
    const info = validatePipelineForCpflow(parseCppipe(text, 'noexport.cppipe'));
    expect(info.exportsSpreadsheet).toBe(false);
    expect(info.channels).toEqual(['DNA', 'PH3', 'cellbody']);
  });

  it('treats a disabled ExportToSpreadsheet as absent', () => {
    const text = example.replace(/(ExportToSpreadsheet:\[[^\n]*)enabled:True/, '$1enabled:False');
    expect(validatePipelineForCpflow(parseCppipe(text, 'off.cppipe')).exportsSpreadsheet).toBe(false);
  });

  it('notes SaveImages modules that do not record their file in the Image table', () => {
    expect(validatePipelineForCpflow(parseCppipe(example)).unrecordedSaves).toEqual([]);
    const unrecorded = example.replace('Record the file and path information to the saved image?:Yes', 'Record the file and path information to the saved image?:No');
    expect(validatePipelineForCpflow(parseCppipe(unrecorded)).unrecordedSaves).toEqual([13]);
  });

  it('accepts a LoadData pipeline: its channels come from the CSV', () => {
    const text = fs.readFileSync(path.join(EXAMPLE_HUMAN, 'ExampleHuman-LoadData.cppipe'), 'utf8');
    const info = validatePipelineForCpflow(parseCppipe(text, 'ExampleHuman-LoadData.cppipe'));
    expect(info.input).toBe('loaddata');
    expect(info.channels).toEqual([]);
    expect(info.objects).toEqual(['Nuclei', 'PH3', 'Cells', 'Cytoplasm']);
  });

  it('refuses CreateBatchFiles: cpflow is the batch system', () => {
    const text = example
      .replace('ModuleCount:14', 'ModuleCount:15')
      .concat('\nCreateBatchFiles:[module_num:15|svn_version:\'Unknown\'|variable_revision_number:8|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]\n    Store batch files in default output folder?:Yes\n');
    expect(pipelineError(() => validatePipelineForCpflow(parseCppipe(text, 'batch.cppipe'))).message).toMatch(/CreateBatchFiles \(module 15\).*remove or disable it/);
  });

  it('rejects ExportToSpreadsheet writing outside the output folder', () => {
    // SaveImages has the same setting text; change only ExportToSpreadsheet's (the last one).
    const at = example.lastIndexOf('Output file location:Default Output Folder|');
    expect(at).toBeGreaterThan(example.indexOf('ExportToSpreadsheet:['));
    const text = `${example.slice(0, at)}Output file location:Elsewhere...|/data/out${example.slice(at + 'Output file location:Default Output Folder|'.length)}`;
    expect(pipelineError(() => validatePipelineForCpflow(parseCppipe(text, 'elsewhere.cppipe'))).message).toMatch(
      /elsewhere\.cppipe: .*Elsewhere/,
    );
  });

  it('reads the ExportToSpreadsheet file-name prefix only when enabled', () => {
    expect(spreadsheetFilePrefix(parseCppipe(example))).toBe('');
    const prefixed = example.replace('Add a prefix to file names?:No', 'Add a prefix to file names?:Yes');
    expect(spreadsheetFilePrefix(parseCppipe(prefixed))).toBe('MyExpt_');
  });
});

describe('parseCppipe errors', () => {
  it('rejects a PNG with a clear message', () => {
    const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(32)]);
    const err = pipelineError(() => parseCppipe(png.toString('latin1'), 'cells.png'));
    expect(err.message).toMatch(/^cells\.png: not a CellProfiler text pipeline \(it is a PNG image\)/);
    expect(err.source).toBe('cells.png');
  });

  it('rejects an HDF5 .cpproj project, pointing at pipeline export', () => {
    const hdf5 = Buffer.concat([Buffer.from([0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(64)]);
    // Read as UTF-8, as a caller that does not know the type would.
    const err = pipelineError(() => parseCppipe(hdf5.toString('utf8'), 'project.cpproj'));
    expect(err.message).toMatch(/project\.cpproj: not a CellProfiler text pipeline .*HDF5.*\.cpproj/);
  });

  it('rejects empty and unrelated text', () => {
    expect(pipelineError(() => parseCppipe('', 'empty.cppipe')).message).toMatch(/empty/);
    expect(pipelineError(() => parseCppipe('hello\nworld\n', 'notes.txt')).message).toMatch(
      /notes\.txt: .*first line is "hello"/,
    );
  });

  it('rejects a newer pipeline Version', () => {
    const err = pipelineError(() => parseCppipe(example.replace('Version:5', 'Version:6'), 'v6.cppipe'));
    expect(err.message).toMatch(/v6\.cppipe: .*Version 6 is newer than supported/);
  });

  it('rejects a DateRevision above 500 but accepts 500 and old timestamp revisions', () => {
    expect(pipelineError(() => parseCppipe(example.replace('DateRevision:400', 'DateRevision:510'), 'new.cppipe')).message).toMatch(
      /DateRevision 510/,
    );
    expect(parseCppipe(example.replace('DateRevision:400', 'DateRevision:500')).dateRevision).toBe(500);
    expect(parseCppipe(example.replace('DateRevision:400', 'DateRevision:20120424205644')).dateRevision).toBe(
      20120424205644,
    );
  });

  it('rejects a ModuleCount that does not match the modules found', () => {
    const more = pipelineError(() => parseCppipe(example.replace('ModuleCount:14', 'ModuleCount:15'), 'count.cppipe'));
    expect(more.message).toMatch(/count\.cppipe: header says ModuleCount:15 but 14 modules found/);
    const truncated = withoutModule(example, 'SaveImages');
    expect(pipelineError(() => parseCppipe(truncated, 'cut.cppipe')).message).toMatch(/ModuleCount:14 but 13 modules/);
  });

  it('rejects a missing or malformed ModuleCount header', () => {
    expect(pipelineError(() => parseCppipe(example.replace('ModuleCount:14\n', ''), 'h.cppipe')).message).toMatch(
      /"ModuleCount:" is missing/,
    );
    expect(pipelineError(() => parseCppipe(example.replace('ModuleCount:14', 'ModuleCount:many'))).message).toMatch(
      /not a whole number/,
    );
  });
});

describe('pipelineSha256', () => {
  it('is the sha256 of the UTF-8 bytes, equal for string and bytes', () => {
    const bytes = fs.readFileSync(EXAMPLE_PATH);
    const expected = createHash('sha256').update(bytes).digest('hex');
    expect(pipelineSha256(example)).toBe(expected);
    expect(pipelineSha256(bytes)).toBe(expected);
    expect(pipelineSha256(`${example} `)).not.toBe(expected);
  });
});
