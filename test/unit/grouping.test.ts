import { GROUPING_PRESETS, GroupingError, groupFiles, resolveGroupingRule } from '../../core/grouping';

describe('grouping rules', () => {
  const names = (list: string[]) => list;

  it('groups the ExampleHuman names into one set with the pipeline channel names', () => {
    const rule = resolveGroupingRule('examplehuman');
    const files = ['AS_09125_050116030001_D03f00d0.tif', 'AS_09125_050116030001_D03f00d1.tif', 'AS_09125_050116030001_D03f00d2.tif'];
    const r = groupFiles(names(files), (f) => f, rule, ['DNA', 'PH3', 'cellbody']);
    expect(r.sets).toHaveLength(1);
    expect(r.sets[0]!.key).toBe('AS_09125_050116030001-D03-f00');
    expect(r.sets[0]!.metadata).toEqual({ Plate: 'AS_09125_050116030001', Well: 'D03', Site: '00' });
    expect(r.sets[0]!.files.map((f) => [f.channel, f.file])).toEqual([
      ['DNA', files[0]],
      ['PH3', files[1]],
      ['cellbody', files[2]],
    ]);
  });

  it('keys synthetic sets by template and reports files that match nothing', () => {
    const r = groupFiles(
      ['a/P1_A01_s1_wDNA.tif', 'a/P1_A01_s1_wActin.tif', 'a/P1_B12_s2_wDNA.png', 'a/P1_B12_s2_wActin.png', 'notes.txt'],
      (f) => f,
      GROUPING_PRESETS.synthetic!.rule,
    );
    expect(r.sets.map((s) => s.key)).toEqual(['P1-A01-s1', 'P1-B12-s2']);
    expect(r.unmatched).toEqual(['notes.txt']);
    expect(r.channels).toEqual(['Actin', 'DNA']);
  });

  it('names the set that lacks a channel the pipeline needs', () => {
    expect(() =>
      groupFiles(['P1_A01_s1_wDNA.tif', 'P1_A02_s1_wDNA.tif', 'P1_A02_s1_wActin.tif'], (f) => f, GROUPING_PRESETS.synthetic!.rule, ['DNA', 'Actin']),
    ).toThrow(/image set P1-A01-s1 lacks channel Actin/);
  });

  it('names both files when a set has two for one channel', () => {
    const rule = resolveGroupingRule('^(?<Well>[A-P]\\d{2})_(?<Channel>\\w+?)(_copy)?\\.tif$');
    expect(() => groupFiles(['A01_DNA.tif', 'A01_DNA_copy.tif'], (f) => f, rule)).toThrow(/A01: two files for channel DNA: A01_DNA.tif and A01_DNA_copy.tif/);
  });

  it('rejects expressions that are invalid or have no channel group, naming the option', () => {
    expect(() => resolveGroupingRule('(?<Well>[A-P')).toThrow(GroupingError);
    expect(() => resolveGroupingRule('(?<Well>[A-P]\\d{2})\\.tif')).toThrow(/--grouping: .*no named group \(\?<Channel>/);
    expect(() => resolveGroupingRule('{"pattern": 3}')).toThrow(/--grouping: pattern/);
  });

  it('applies a channel map given beside a bare expression', () => {
    const rule = resolveGroupingRule('^(?<Well>[A-P]\\d{2})_(?<Channel>ch\\d)\\.tif$', { ch1: 'DNA', ch2: 'Actin' });
    const r = groupFiles(['A01_ch1.tif', 'A01_ch2.tif'], (f) => f, rule, ['DNA', 'Actin']);
    expect(r.sets[0]!.files.map((f) => f.channel)).toEqual(['Actin', 'DNA']);
  });
});
