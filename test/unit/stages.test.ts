import fs from 'node:fs';
import path from 'node:path';
import { ExperimentFileError, parseExperimentFile } from '../../core/experiment-file';
import { checkChannelMapKeys, GROUPING_PRESETS, GroupingError, groupFiles, metadataKeysOf, resolveGroupingRule } from '../../core/grouping';
import { LoadDataError, parseLoadDataCsv } from '../../core/load-data';
import { DEFAULTS, groupKeyOf, stageInputFileName } from '../../core/model';
import { parseCppipe } from '../../core/pipeline/cppipe';
import { describePooling, pipelineGroupingKeys, poolingFindings } from '../../core/pipeline/pooling';
import { validatePipelineForCpflow } from '../../core/pipeline/validate';
import { checkGrouping, planStages, requiredImageChannels, stageSets, StagePlanError, type PlannedStage } from '../../starter/submit-stages';

const FIXTURES = path.join(__dirname, '..', 'fixtures');
const pipelineText = (name: string) => fs.readFileSync(path.join(FIXTURES, 'pipelines', name), 'utf8');
const example = fs.readFileSync(path.join(FIXTURES, 'examplehuman', 'ExampleHuman.cppipe'), 'utf8');

describe('pooling detection', () => {
  it('finds CorrectIlluminationCalculate in All mode, with the setting that makes it pool', () => {
    const findings = poolingFindings(parseCppipe(pipelineText('illum-pooled.cppipe')));
    expect(findings).toEqual([
      expect.objectContaining({ module: 'CorrectIlluminationCalculate', moduleNum: 5, setting: 'Calculate function for each image individually, or based on all images?', value: 'All' }),
    ]);
    expect(describePooling(findings[0]!)).toMatch(/^CorrectIlluminationCalculate \(module 5\) pools image sets \("Calculate function .*" is "All"\)/);
  });

  it('reads CellProfiler 4 spellings, Each mode, and SaveImages at the last cycle', () => {
    const old = pipelineText('illum-calculate.cppipe').replace('based on all images?:All', 'based on all images?:All: First cycle');
    expect(poolingFindings(parseCppipe(old)).map((f) => [f.module, f.value])).toEqual([
      ['CorrectIlluminationCalculate', 'All: First cycle'],
      ['SaveImages', 'Last cycle'],
    ]);
    const each = pipelineText('illum-pooled.cppipe').replace('based on all images?:All', 'based on all images?:Each');
    expect(poolingFindings(parseCppipe(each))).toEqual([]);
    expect(poolingFindings(parseCppipe(example))).toEqual([]);
  });

  it('counts modules that always pool and experiment-wide statistics', () => {
    const withModule = (header: string, settings: string) =>
      example.replace('ModuleCount:14', 'ModuleCount:15').concat(`\n${header.replace('N', '15')}\n${settings}\n`);
    const module = (name: string) => `${name}:[module_num:N|svn_version:'Unknown'|variable_revision_number:1|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]`;
    expect(poolingFindings(parseCppipe(withModule(module('TrackObjects'), '    Choose a tracking method:Overlap')))[0]).toMatchObject({ module: 'TrackObjects', moduleNum: 15 });
    expect(poolingFindings(parseCppipe(withModule(module('MeasureImageQuality'), '    Calculate thresholds?:Yes')))[0]).toMatchObject({
      module: 'MeasureImageQuality',
      setting: 'Calculate thresholds?',
    });
    expect(poolingFindings(parseCppipe(withModule(module('MeasureImageQuality'), '    Calculate thresholds?:No')))).toEqual([]);
    const disabled = withModule(module('TrackObjects').replace('enabled:True', 'enabled:False'), '    Choose a tracking method:Overlap');
    expect(poolingFindings(parseCppipe(disabled))).toEqual([]);
  });

  it('reads the Groups module keys only when it groups', () => {
    expect(pipelineGroupingKeys(parseCppipe(example))).toBeUndefined();
    const grouped = example.replace('Do you want to group your images?:No', 'Do you want to group your images?:Yes').replace('Metadata category:None', 'Metadata category:Plate');
    expect(pipelineGroupingKeys(parseCppipe(grouped))).toEqual(['Plate']);
  });
});

describe('submit stage checks', () => {
  const stage = (name: string, overrides: Partial<PlannedStage> = {}): PlannedStage => ({
    name,
    label: `--pipeline ${name}.cppipe`,
    groupBy: [],
    inputs: [],
    info: validatePipelineForCpflow(parseCppipe(pipelineText('illum-pooled.cppipe'))),
    ...overrides,
  });

  it('refuses a pooling pipeline without --group-by, naming the module, the setting and the flag', () => {
    expect(() => checkGrouping(stage(''), ['Plate', 'Well', 'Site'])).toThrow(
      /CorrectIlluminationCalculate \(module 5\) pools image sets \("Calculate function for each image individually, or based on all images\?" is "All"\).*run it with --group-by Plate/,
    );
    expect(() => checkGrouping(stage('illum'), ['Plate'])).toThrow(/give stage illum groupBy: \[Plate\] in the experiment file/);
    expect(() => checkGrouping(stage('', { groupBy: ['Plate'] }), ['Plate', 'Well'])).not.toThrow();
  });

  it('accepts experiment-wide statistics without --group-by, with a warning', () => {
    const text = example
      .replace('ModuleCount:14', 'ModuleCount:15')
      .concat(`\nMeasureImageQuality:[module_num:15|svn_version:'Unknown'|variable_revision_number:6|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]\n    Calculate thresholds?:Yes\n`);
    const info = validatePipelineForCpflow(parseCppipe(text));
    const warnings: string[] = [];
    expect(() => checkGrouping(stage('', { info }), ['Plate'], undefined, warnings)).not.toThrow();
    expect(warnings).toEqual([expect.stringMatching(/MeasureImageQuality \(module 15\) computes experiment-wide values \("Calculate thresholds\?" is "Yes"\).*each set's Experiment table holds that set's values/)]);
  });

  it('refuses an unknown --group-by key with the keys there are', () => {
    expect(() => checkGrouping(stage('', { groupBy: ['Plat'] }), ['Plate', 'Well', 'Site'])).toThrow(
      /--group-by: Plat is not a metadata key of the image sets \(keys: Plate, Well, Site\)/,
    );
  });

  it('refuses groups that would split the pipeline\'s own Groups', () => {
    const info = { ...validatePipelineForCpflow(parseCppipe(example)), groupingKeys: ['Plate'] };
    expect(() => checkGrouping(stage('', { info, groupBy: ['Plate', 'Well'] }), ['Plate', 'Well'])).toThrow(/Groups module groups by Plate, so Well would split its groups/);
    expect(() => checkGrouping(stage('', { info, groupBy: ['Plate'] }), ['Plate', 'Well'])).not.toThrow();
  });

  it('gives every stage every image set, with its group and partition, and limits group sizes', () => {
    const illum = stage('illum', { groupBy: ['Plate'] });
    const analysis = stage('analysis', { inputs: [{ stage: 'illum', file: 'IllumDNA.npy', as: 'IllumDNA' }] });
    const sets = ['P1', 'P2'].flatMap((plate) => [1, 2].map((site) => ({ key: `${plate}-s${site}`, metadata: { Plate: plate, Site: String(site) }, files: [] })));
    const rows = stageSets([illum, analysis], sets);
    expect(rows.map((r) => [r.stage, r.key, r.groupKey, r.partitionKey])).toEqual([
      ['illum', 'P1-s1', 'P1', ''],
      ['illum', 'P1-s2', 'P1', ''],
      ['illum', 'P2-s1', 'P2', ''],
      ['illum', 'P2-s2', 'P2', ''],
      ['analysis', 'P1-s1', '', 'P1'],
      ['analysis', 'P1-s2', '', 'P1'],
      ['analysis', 'P2-s1', '', 'P2'],
      ['analysis', 'P2-s2', '', 'P2'],
    ]);
    const big = Array.from({ length: DEFAULTS.MAX_GROUP_SETS + 1 }, (_, i) => ({ key: `s${i}`, metadata: { Plate: 'P1' }, files: [] }));
    expect(() => stageSets([stage('', { groupBy: ['Plate'] })], big)).toThrow(
      new RegExp(`--group-by Plate: group P1 has ${DEFAULTS.MAX_GROUP_SETS + 1} image sets; .* at most ${DEFAULTS.MAX_GROUP_SETS}`),
    );
  });

  it('needs from the image files only what no earlier stage delivers', () => {
    const analysisInfo = validatePipelineForCpflow(parseCppipe(pipelineText('analysis-with-illum.cppipe')));
    expect(analysisInfo.channels).toEqual(['DNA', 'IllumDNA']);
    const stages = [stage('illum'), stage('analysis', { info: analysisInfo, inputs: [{ stage: 'illum', file: 'IllumDNA.npy', as: 'IllumDNA' }] })];
    expect(requiredImageChannels(stages)).toEqual(['DNA']);
  });

  it('plans one stage from --pipeline and refuses mixing it with --experiment', () => {
    const pipeline = path.join(FIXTURES, 'pipelines', 'illum-pooled.cppipe');
    const [single] = planStages({ pipelineFile: pipeline, groupBy: ['Plate'] });
    expect(single).toMatchObject({ name: '', groupBy: ['Plate'], info: expect.objectContaining({ input: 'files' }) });
    expect(() => planStages({ pipelineFile: pipeline, experimentFile: 'x.yaml' })).toThrow(StagePlanError);
  });

  it('fills {Key} placeholders of stage input names and joins group keys', () => {
    expect(stageInputFileName('{Plate}_IllumDNA.npy', { Plate: 'P1' })).toBe('P1_IllumDNA.npy');
    expect(groupKeyOf({ Plate: 'P 1', Well: 'A01' }, ['Plate', 'Well'])).toBe('P_1-A01');
    expect(groupKeyOf({ Plate: 'P1' }, [])).toBe('');
  });
});

describe('LoadData CSVs', () => {
  const header = 'Metadata_Plate,Metadata_Well,FileName_DNA,PathName_DNA,FileName_Actin,PathName_Actin';
  it('makes one image set per row with its metadata and files', () => {
    const t = parseLoadDataCsv(`${header}\nP1,A01,a.tif,plate1,b.tif,plate1/sub\nP1,A02,c.tif,,d.tif,.\n`, 'ld.csv');
    expect(t.channels).toEqual(['DNA', 'Actin']);
    expect(t.metadataKeys).toEqual(['Plate', 'Well']);
    expect(t.sets.map((s) => [s.row, s.key, s.metadata, s.files.map((f) => f.location)])).toEqual([
      [1, 'P1-A01', { Plate: 'P1', Well: 'A01' }, [{ kind: 'relative', path: 'plate1/a.tif' }, { kind: 'relative', path: 'plate1/sub/b.tif' }]],
      [2, 'P1-A02', { Plate: 'P1', Well: 'A02' }, [{ kind: 'relative', path: 'c.tif' }, { kind: 'relative', path: 'd.tif' }]],
    ]);
  });

  it('takes s3:// URLs, objects and absolute folders inside --folder', () => {
    const t = parseLoadDataCsv(
      'URL_DNA,ObjectsFileName_Nuclei,ObjectsPathName_Nuclei\ns3://b/x/a.tif,n.png,/data/run/masks\n',
      'ld.csv',
      { folderRoot: '/data/run' },
    );
    expect(t.sets[0]!.key).toBe('row-000001');
    expect(t.sets[0]!.files).toEqual([
      { channel: 'DNA', location: { kind: 's3', uri: 's3://b/x/a.tif' } },
      { channel: 'Objects:Nuclei', location: { kind: 'relative', path: 'masks/n.png' } },
    ]);
  });

  it.each([
    ['a header only', `${header}\n`, /has a header but no rows/],
    ['no file column', 'Metadata_Plate\nP1\n', /has no FileName_<Name> or URL_<Name> column/],
    ['a PathName without its FileName', 'PathName_DNA,FileName_Actin\nx,a.tif\n', /column PathName_DNA has no FileName_DNA/],
    ['an empty file cell', `${header}\nP1,A01,,p,b.tif,p\n`, /row 1: no file for DNA \(FileName_DNA is empty\)/],
    ['duplicated sets', `${header}\nP1,A01,a.tif,p,b.tif,p\nP1,A01,c.tif,p,d.tif,p\n`, /rows 1 and 2 are the same image set \(Plate=P1, Well=A01\): duplicated sets/],
    ['the same files twice', 'FileName_DNA\na.tif\na.tif\n', /rows 1 and 2 list the same files: duplicated sets/],
    ['an unsupported column', 'FileName_DNA,Series_DNA\na.tif,0\n', /column Series_DNA is not supported/],
    ['a URL that is not S3', 'URL_DNA\nhttp://x/a.tif\n', /row 1: URL "http:\/\/x\/a.tif" is not an s3:\/\/ URL/],
    ['an absolute folder outside --folder', 'FileName_DNA,PathName_DNA\na.tif,/elsewhere\n', /row 1: PathName "\/elsewhere" is absolute/],
    ['a column twice', 'FileName_DNA,FileName_DNA\na.tif,b.tif\n', /column FileName_DNA appears twice/],
  ])('refuses %s in one line naming the file', (_what, text, message) => {
    expect(() => parseLoadDataCsv(text, 'bad.csv', { folderRoot: '/data/run' })).toThrow(LoadDataError);
    expect(() => parseLoadDataCsv(text, 'bad.csv', { folderRoot: '/data/run' })).toThrow(message);
    expect(() => parseLoadDataCsv(text, 'bad.csv', { folderRoot: '/data/run' })).toThrow(/^--load-data bad\.csv: /);
  });
});

describe('experiment files', () => {
  const twoStages = `
stages:
  - name: analysis
    pipeline: analysis.cppipe
    inputs:
      - { stage: illum, file: IllumDNA.npy, as: IllumDNA }
  - name: illum
    pipeline: illum.cppipe
    groupBy: [Plate]
`;
  it('orders stages after the stages they take files from, pipelines relative to the file', () => {
    const stages = parseExperimentFile(twoStages, '/data/exp/stages.yaml');
    expect(stages.map((s) => [s.name, s.pipelinePath, s.groupBy])).toEqual([
      ['illum', '/data/exp/illum.cppipe', ['Plate']],
      ['analysis', '/data/exp/analysis.cppipe', []],
    ]);
    // JSON is YAML too.
    expect(parseExperimentFile(JSON.stringify({ stages: [{ name: 'one', pipeline: 'p.cppipe' }] }), 'e.json')).toHaveLength(1);
  });

  it.each([
    ['a cycle', 'stages:\n  - {name: a, pipeline: a.cppipe, groupBy: [Plate], inputs: [{stage: b, file: x, as: X}]}\n  - {name: b, pipeline: b.cppipe, groupBy: [Plate], inputs: [{stage: a, file: y, as: Y}]}\n', /stages a, b take files from each other \(a cycle\)/],
    ['an unknown stage', 'stages:\n  - {name: a, pipeline: a.cppipe, inputs: [{stage: illum, file: x, as: X}]}\n', /stage a takes files from unknown stage illum/],
    ['an upstream without groupBy', 'stages:\n  - {name: u, pipeline: u.cppipe}\n  - {name: a, pipeline: a.cppipe, inputs: [{stage: u, file: x, as: X}]}\n', /which has no groupBy/],
    ['a stage twice', 'stages:\n  - {name: a, pipeline: a.cppipe}\n  - {name: a, pipeline: b.cppipe}\n', /stage a is declared twice/],
    ['an unknown key', 'stages:\n  - {name: a, pipeline: a.cppipe, groupby: [Plate]}\n', /stages\.0: Unrecognized key/],
    ['no stages', 'stages: []\n', /declares no stage/],
    ['not YAML', 'stages: [\n', /not valid YAML or JSON/],
    ['a self reference', 'stages:\n  - {name: a, pipeline: a.cppipe, groupBy: [P], inputs: [{stage: a, file: x, as: X}]}\n', /takes files from itself/],
  ])('refuses %s in one line naming the file', (_what, text, message) => {
    expect(() => parseExperimentFile(text, 'bad.yaml')).toThrow(ExperimentFileError);
    expect(() => parseExperimentFile(text, 'bad.yaml')).toThrow(message);
    expect(() => parseExperimentFile(text, 'bad.yaml')).toThrow(/^--experiment bad\.yaml: /);
  });
});

describe('grouping rules (production additions)', () => {
  it("accepts CellProfiler's Python-style named groups", () => {
    const rule = resolveGroupingRule('^(?P<Plate>[^_]+)_(?P<Well>[A-P][0-9]{2})_s(?P<Site>[0-9]+)_w(?P<Channel>[A-Za-z0-9]+)\\.tif$');
    expect(metadataKeysOf(rule)).toEqual(['Plate', 'Well', 'Site']);
    const r = groupFiles(['P1_A01_s1_wDNA.tif'], (f) => f, rule);
    expect(r.sets[0]!.metadata).toEqual({ Plate: 'P1', Well: 'A01', Site: '1' });
  });

  it('refuses --channel-map keys no file has, listing the raw channels found', () => {
    const rule = resolveGroupingRule('examplehuman', { d0: 'DNA' });
    const r = groupFiles(['AS_1_D03f00d0.tif', 'AS_1_D03f00d1.tif'], (f) => f, rule);
    expect(() => checkChannelMapKeys({ d0: 'DNA' }, r)).toThrow(GroupingError);
    expect(() => checkChannelMapKeys({ d0: 'DNA' }, r)).toThrow(/--channel-map: no file has the raw channel "d0" \(raw channels in the file names: 0, 1\)/);
    expect(() => checkChannelMapKeys({ '0': 'DNA' }, r)).not.toThrow();
  });

  it('says which channels were found when one is missing', () => {
    expect(() => groupFiles(['P1_A01_s1_wDNA.tif'], (f) => f, GROUPING_PRESETS.synthetic!.rule, ['DNA', 'Actin'])).toThrow(
      /image set P1-A01-s1 lacks channel Actin \(channels found in the file names: DNA; needed: DNA, Actin\)/,
    );
  });
});
