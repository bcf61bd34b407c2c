import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { listLocalFolder } from '../../starter/local-files';

/** What `cpflow submit --folder` sees of a folder: links followed, odd entries refused, hidden counted. */
describe('listing a submitted folder', () => {
  let root: string;
  let elsewhere: string;
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-listing-'));
    elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-listing-target-'));
  });

  it('follows links to files and to folders, and reads a folder reached twice only once', () => {
    fs.writeFileSync(path.join(root, 'P1_A01_s1_wDNA.tif'), 'a');
    fs.writeFileSync(path.join(elsewhere, 'P1_A01_s1_wActin.tif'), 'bb');
    fs.mkdirSync(path.join(elsewhere, 'more'));
    fs.writeFileSync(path.join(elsewhere, 'more', 'P1_A02_s1_wDNA.tif'), 'ccc');
    fs.symlinkSync(path.join(elsewhere, 'P1_A01_s1_wActin.tif'), path.join(root, 'P1_A01_s1_wActin.tif'));
    fs.symlinkSync(path.join(elsewhere, 'more'), path.join(root, 'linked'));
    fs.symlinkSync(root, path.join(root, 'loop-to-root'));
    const listing = listLocalFolder(root);
    expect(listing.files.map((f) => [f.name, f.size])).toEqual([
      ['P1_A01_s1_wActin.tif', 2],
      ['P1_A01_s1_wDNA.tif', 1],
      ['linked/P1_A02_s1_wDNA.tif', 3],
    ]);
    expect(listing.refused).toEqual([]);
  });

  it('refuses broken links and entries that are not files, naming each and why', () => {
    fs.writeFileSync(path.join(root, 'ok.tif'), 'a');
    fs.symlinkSync(path.join(elsewhere, 'gone.tif'), path.join(root, 'broken.tif'));
    fs.symlinkSync(path.join(root, 'self'), path.join(root, 'self'));
    execFileSync('mkfifo', [path.join(root, 'pipe.tif')]);
    const listing = listLocalFolder(root);
    expect(listing.files.map((f) => f.name)).toEqual(['ok.tif']);
    expect(listing.refused).toEqual([
      { name: 'broken.tif', reason: `is a broken symbolic link (to ${path.join(elsewhere, 'gone.tif')})` },
      { name: 'pipe.tif', reason: 'is a FIFO' },
      { name: 'self', reason: 'is a symbolic link loop' },
    ]);
  });

  it('leaves hidden entries out and lists them', () => {
    fs.writeFileSync(path.join(root, '.DS_Store'), 'x');
    fs.writeFileSync(path.join(root, '._P1_A01_s1_wDNA.tif'), 'x');
    fs.mkdirSync(path.join(root, '.git'));
    fs.writeFileSync(path.join(root, '.git', 'HEAD'), 'x');
    fs.writeFileSync(path.join(root, 'P1_A01_s1_wDNA.tif'), 'x');
    const listing = listLocalFolder(root);
    expect(listing.files.map((f) => f.name)).toEqual(['P1_A01_s1_wDNA.tif']);
    expect(listing.hidden).toEqual(['.DS_Store', '._P1_A01_s1_wDNA.tif', '.git']);
  });
});
