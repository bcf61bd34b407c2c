import { UsageError } from '../../core/errors';
import { bucketForProject, bucketNameProblem, canonicalName, foldName, validateBucketName, validateExperimentName, validateProjectName } from '../../core/naming';

describe('project and experiment names', () => {
  it('accepts Unicode names and refuses path separators, "..", control characters, padding and excess length', () => {
    expect(() => validateProjectName('bi ünïcode 项目 ☃')).not.toThrow();
    expect(() => validateExperimentName('plate 1 (re-imaged)')).not.toThrow();
    const refusals: Array<[() => void, RegExp]> = [
      [() => validateProjectName('a/b'), /--project "a\/b" contains a path separator/],
      [() => validateExperimentName('..\\up'), /--name "..\\\\up" contains a path separator/],
      [() => validateExperimentName('../../etc'), /--name "..\/..\/etc" contains a path separator/],
      [() => validateExperimentName('plate..1'), /--name "plate..1" contains "\.\."/],
      [() => validateProjectName('tab\there'), /--project "tab\\there" contains a control character/],
      [() => validateProjectName(' padded'), /starts or ends with a space/],
      [() => validateProjectName(''), /--project "" is empty/],
      [() => validateProjectName('p'.repeat(129)), /is 129 characters long; at most 128 are allowed/],
      [() => validateExperimentName('e'.repeat(201)), /--name "e+" is 201 characters long; at most 200 are allowed/],
    ];
    for (const [check, message] of refusals) {
      expect(check).toThrow(UsageError);
      expect(check).toThrow(message);
    }
  });

  it('counts characters, not bytes, against the column widths', () => {
    expect(() => validateProjectName('项'.repeat(128))).not.toThrow();
    expect(() => validateProjectName('项'.repeat(129))).toThrow(/129 characters/);
  });

  it('keeps names in normal form C so decomposed and composed spellings are one name', () => {
    expect(canonicalName('u\u0308nicode')).toBe('ünicode');
  });
});

describe('project buckets', () => {
  it('gives names that used to collide distinct, valid buckets', () => {
    const pairs: Array<[string, string]> = [
      ['bi-UPPER_case', 'bi-upper-case'],
      ['bi ünïcode 项目 ☃', 'bi ünïcode 项目'],
      ['项目', '☃'],
    ];
    for (const [a, b] of pairs) {
      expect(bucketForProject(a)).not.toBe(bucketForProject(b));
      for (const bucket of [bucketForProject(a), bucketForProject(b)]) expect(bucketNameProblem(bucket)).toBeUndefined();
    }
    expect(bucketForProject('bi ünïcode 项目 ☃')).toMatch(/^cpflow-bi-unicode-[0-9a-f]{10}$/);
    expect(bucketForProject('项目')).toMatch(/^cpflow-[0-9a-f]{10}$/);
  });

  it('is deterministic and at most 63 characters for any name', () => {
    expect(bucketForProject('Screen 42')).toBe(bucketForProject('Screen 42'));
    const long = bucketForProject(`${'a-'.repeat(60)}Z`);
    expect(long.length).toBeLessThanOrEqual(63);
    expect(bucketNameProblem(long)).toBeUndefined();
  });

  it('folds names that differ only in case, accents or separators to one form', () => {
    expect(foldName('bi-UPPER_case')).toBe(foldName('bi-upper-case'));
    expect(foldName('Bi Ünïcode')).toBe(foldName('bi.unicode'));
    expect(foldName('bi ünïcode 项目 ☃')).not.toBe(foldName('bi ünïcode 项目'));
  });

  it('names what is wrong with a bucket given by hand', () => {
    expect(() => validateBucketName('Cpflow_X')).toThrow(/--bucket "Cpflow_X" may hold only lower-case letters, digits/);
    expect(() => validateBucketName('ab')).toThrow(/is 2 characters long; bucket names have 3 to 63/);
    expect(() => validateBucketName('192.168.1.1')).toThrow(/looks like an IP address/);
    expect(() => validateBucketName('a..b')).toThrow(/has "\.\."/);
    expect(() => validateBucketName('cpflow-lab-7')).not.toThrow();
  });
});
