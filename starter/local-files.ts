import fs from 'node:fs';
import path from 'node:path';

/**
 * The files of a folder given to `cpflow submit --folder`, nothing skipped silently:
 * - symbolic links are followed (to files and to folders; a folder reached twice through links is
 *   read once), so a plate assembled from links uploads every image;
 * - entries that cannot be submitted (broken links, link loops, FIFOs, sockets, devices, unreadable
 *   folders) are returned as `refused` with the reason, and the submit refuses the whole folder;
 * - hidden entries (`.DS_Store`, `._P1_A01_s1_wDNA.tif` AppleDouble files, `.git/`) are left out but
 *   counted, because grouping rules such as `examplehuman` would take AppleDouble copies for images.
 */

export interface LocalFile {
  /** Path relative to the folder, with `/` separators: what grouping matches and the upload key ends with. */
  name: string;
  /** Absolute path to read (through a link when the entry is one). */
  local: string;
  size: number;
}

export interface LocalListing {
  files: LocalFile[];
  hidden: string[];
  refused: Array<{ name: string; reason: string }>;
}

function kindOf(stat: fs.Stats): string {
  if (stat.isFIFO()) return 'a FIFO';
  if (stat.isSocket()) return 'a socket';
  if (stat.isBlockDevice() || stat.isCharacterDevice()) return 'a device';
  return 'not a regular file';
}

export function listLocalFolder(root: string): LocalListing {
  const listing: LocalListing = { files: [], hidden: [], refused: [] };
  const visited = new Set<string>();
  const walk = (dir: string, rel: string): void => {
    let real: string;
    let entries: fs.Dirent[];
    try {
      real = fs.realpathSync(dir);
      if (visited.has(real)) return; // reached again through a link: its files are listed once
      visited.add(real);
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch (err) {
      listing.refused.push({ name: rel || '.', reason: `cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)})` });
      return;
    }
    for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const name = rel ? `${rel}/${entry.name}` : entry.name;
      const full = path.join(dir, entry.name);
      if (entry.name.startsWith('.')) {
        listing.hidden.push(name);
        continue;
      }
      let stat: fs.Stats;
      try {
        stat = fs.statSync(full); // follows links
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const reason = entry.isSymbolicLink()
          ? code === 'ELOOP'
            ? 'is a symbolic link loop'
            : `is a broken symbolic link (to ${fs.readlinkSync(full)})`
          : `cannot be read (${code ?? String(err)})`;
        listing.refused.push({ name, reason });
        continue;
      }
      if (stat.isDirectory()) walk(full, name);
      else if (stat.isFile()) listing.files.push({ name, local: full, size: stat.size });
      else listing.refused.push({ name, reason: `is ${kindOf(stat)}` });
    }
  };
  walk(path.resolve(root), '');
  listing.files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return listing;
}

/** `a, b, c (and 7 more)`: lists in one-line messages stay readable. */
export function firstFew(items: string[], shown = 5): string {
  const head = items.slice(0, shown).join(', ');
  return items.length > shown ? `${head} (and ${items.length - shown} more)` : head;
}
