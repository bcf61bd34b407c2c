import { UsageError } from '../../core/errors';
import { checkPlatemap, parseControlsChoice, parsePlatemap, wellsOfSets } from '../../core/platemap';

/** The platemap checks `cpflow submit --platemap` runs before anything is uploaded. */

const wells12 = ['A01', 'A02', 'A03', 'A04', 'B01', 'B02', 'B03', 'B04', 'C01', 'C02', 'C03', 'C04'];
const platemapText = [
  'well_position,treatment,dose,control_type',
  ...wells12.map((w) => `${w},${w.startsWith('A') ? 'DMSO' : w.startsWith('B') ? 'enlarge' : 'dim'},${w.startsWith('A') ? '0' : '1'},${w.startsWith('A') ? 'negcon' : ''}`),
  // A whole-plate platemap: wells the experiment did not image are fine.
  'H12,DMSO,0,negcon',
].join('\n');

const failure = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    const message = (err as Error).message;
    expect(message).not.toContain('\n'); // one line
    return message;
  }
  throw new Error('expected a UsageError');
};

describe('platemap checks', () => {
  it('accepts a platemap covering every well, with control_type=negcon controls by default', () => {
    const platemap = parsePlatemap(platemapText, 'plate.csv');
    expect(platemap.columns).toEqual(['well_position', 'treatment', 'dose', 'control_type']);
    expect(checkPlatemap(platemap, wells12, undefined)).toEqual({
      controls: { column: 'control_type', value: 'negcon' },
      wells: 12,
      controlWells: 4,
      unusedRows: 1,
    });
    // Several sites per well count once.
    expect(checkPlatemap(platemap, [...wells12, ...wells12], undefined).wells).toBe(12);
  });

  it('takes other control labels, or none (whole-plate normalisation)', () => {
    const platemap = parsePlatemap(platemapText, 'plate.csv');
    expect(checkPlatemap(platemap, wells12, parseControlsChoice('treatment=DMSO')).controls).toEqual({ column: 'treatment', value: 'DMSO' });
    expect(checkPlatemap(platemap, wells12, parseControlsChoice('none')).controls).toBeNull();
    const noControlColumn = parsePlatemap('well_position,treatment\nA01,x\nA02,y\n', 'p.csv');
    expect(checkPlatemap(noControlColumn, ['A01', 'A02'], undefined)).toMatchObject({ controls: null, controlWells: 0 });
  });

  it('refuses unknown wells, duplicate wells, and a platemap covering none of the wells', () => {
    const platemap = parsePlatemap(platemapText, 'plate.csv');
    expect(failure(() => checkPlatemap(platemap, [...wells12, 'D01', 'D02'], undefined))).toBe(
      '--platemap plate.csv: has no entry for wells D01, D02 of the experiment (2 of 14)',
    );
    expect(failure(() => parsePlatemap('well_position,treatment\nA01,x\nA02,y\nA01,z\n', 'dup.csv'))).toBe(
      '--platemap dup.csv: well A01 is listed twice (lines 2 and 4)',
    );
    expect(failure(() => checkPlatemap(parsePlatemap('well_position,treatment\nA1,x\nA2,y\n', 'short.csv'), ['A01', 'A02'], undefined))).toBe(
      "--platemap short.csv: covers none of the experiment's 2 wells (platemap: A1, A2; images: A01, A02)",
    );
    expect(failure(() => parsePlatemap('well_position,treatment\nnot-a-well,x\n', 'bad.csv'))).toBe(
      '--platemap bad.csv: line 2: well_position "not-a-well" is not a well like A01',
    );
    expect(failure(() => parsePlatemap('well,treatment\nA01,x\n', 'nowell.csv'))).toContain('has no well_position column');
    expect(failure(() => parsePlatemap('', 'empty.csv'))).toBe('--platemap empty.csv: is empty');
    expect(failure(() => parsePlatemap('well_position,treatment\nA01,x,extra\n', 'ragged.csv'))).toContain('not a readable CSV');
  });

  it('refuses a control label that matches no well of the experiment', () => {
    const platemap = parsePlatemap(platemapText, 'plate.csv');
    expect(failure(() => checkPlatemap(platemap, wells12, parseControlsChoice('treatment=vehicle')))).toBe(
      "--platemap plate.csv: control label treatment=vehicle matches none of the experiment's wells (treatment there: DMSO, dim, enlarge); " +
        'name the control wells with --controls column=value, or --controls none to normalise against whole plates',
    );
    // The only negcon well the platemap has (H12) was not imaged.
    expect(failure(() => checkPlatemap(platemap, ['B01', 'C01'], undefined))).toContain('control label control_type=negcon matches none');
    expect(failure(() => checkPlatemap(platemap, wells12, parseControlsChoice('plate_type=negcon')))).toContain('has no column plate_type');
    expect(failure(() => parseControlsChoice('control_type'))).toContain('expected column=value');
    expect(failure(() => parseControlsChoice('bad column=x'))).toContain('must be letters, digits and _');
  });

  it('needs a Well for every image set', () => {
    expect(wellsOfSets([{ key: 'P1-A01-s1', metadata: { Well: 'A01' } }], 'p.csv')).toEqual(['A01']);
    expect(failure(() => wellsOfSets([{ key: 'site-3', metadata: { Site: '3' } }], 'p.csv'))).toContain('image set site-3 has no Well metadata');
  });
});
