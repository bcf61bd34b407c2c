import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { db, findProject, getExperiment } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { isTerminal } from '../../core/model';
import { bucketForProject } from '../../core/naming';
import { ensureBucket, firstKeyUnder, getBytes, listObjects, parseS3Uri, putBytes, s3 } from '../../core/s3';
import { submit } from '../../starter/submit';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import { requireStack, runCli, startWatcher, startWorkers, tempDir, teardown, uniqueName, waitForExperiment, type ManagedProcess } from '../support/harness';

/**
 * Input integrity on the real stack (issue 9): what is analysed is what was registered, projects
 * never share a bucket or an input prefix, concurrent submits of one name leave exactly one intact
 * experiment, names are checked before anything is written, folders are read without silently
 * skipping anything, and incomplete sets can be skipped on request.
 */
jest.setTimeout(600_000);

let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;

beforeAll(async () => {
  requireStack();
  [workers, watcher] = await Promise.all([startWorkers(), startWatcher()]);
});

afterAll(async () => {
  await teardown(workers, watcher);
});

const sha256 = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

async function plate(opts: { cols?: number; seed?: number; size?: number } = {}): Promise<string> {
  const dir = tempDir('integrity');
  await generateSyntheticPlate({ outDir: dir, rows: 1, cols: opts.cols ?? 2, sites: 1, size: opts.size ?? 96, seed: opts.seed ?? 1 });
  fs.rmSync(path.join(dir, 'ground-truth.json'));
  return dir;
}

async function bucketExists(bucket: string): Promise<boolean> {
  try {
    await s3().send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1 }));
    return true;
  } catch (err) {
    if ((err as Error).name === 'NoSuchBucket') return false;
    throw err;
  }
}

async function rowCount(sql: string, params: unknown[]): Promise<number> {
  const rows = await (await db()).query<Array<{ n: number }>>(sql, params);
  return Number(rows[0]?.n ?? 0);
}

/** Every registered input of an experiment: its S3 object's sha256 against the registered checksum. */
async function inputsMatchTheirChecksums(experimentId: number): Promise<{ files: number; mismatched: string[] }> {
  const rows = await (await db()).query<Array<{ uri: string; checksum: string }>>(
    'SELECT f.uri, f.checksum FROM image_file f JOIN image_set s ON s.id = f.image_set_id WHERE s.experiment_id = ?',
    [experimentId],
  );
  const mismatched: string[] = [];
  for (const r of rows) {
    const { bucket, key } = parseS3Uri(r.uri);
    if (r.checksum !== `sha256:${sha256(await getBytes(bucket, key))}`) mismatched.push(r.uri);
  }
  return { files: rows.length, mismatched };
}

describe('what is analysed is what was registered', () => {
  it('a retry over an input overwritten since it was registered fails that set, naming the key and both checksums', async () => {
    const dir = await plate({ cols: 3, seed: 5 });
    const victim = 'P1_A01_s1_wDNA.tif';
    fs.writeFileSync(path.join(dir, victim), 'not an image: this set fails its first run');
    const { experimentId } = await submit({ project: uniqueName('checksum'), name: 'plate', folder: dir, grouping: GROUPING_PRESETS.synthetic!.rule, engine: 'builtin' });
    const first = await waitForExperiment(experimentId);
    expect(first.status).toBe('done_with_failures');

    // Someone replaces the broken file in S3 with a good image, then retries: the old cpflow analysed
    // the new bytes and ended `done`; the registered checksum says they are not what was submitted.
    const pool = await db();
    const [row] = await pool.query<Array<{ uri: string; checksum: string }>>(
      `SELECT f.uri, f.checksum FROM image_file f JOIN image_set s ON s.id = f.image_set_id
       WHERE s.experiment_id = ? AND s.set_key = 'P1-A01-s1' AND f.channel = 'DNA'`,
      [experimentId],
    );
    const { bucket, key } = parseS3Uri(row!.uri);
    const replacement = fs.readFileSync(path.join(await plate({ cols: 1, seed: 99 }), victim));
    await putBytes(bucket, key, replacement, 'image/tiff');
    const retried = await runCli(['retry', String(experimentId)]);
    expect(retried.code).toBe(0);
    const second = await waitForExperiment(experimentId, (e) => isTerminal(e.status) && e.claimed_at != null && e.claimed_at > first.finished_at!);
    expect(second.status).toBe('done_with_failures');

    const sets = await pool.query<Array<{ set_key: string; status: string; error: string | null; attempts: number }>>(
      'SELECT set_key, status, error, attempts FROM image_set WHERE experiment_id = ? ORDER BY set_key',
      [experimentId],
    );
    expect(sets.map((s) => [s.set_key, s.status])).toEqual([
      ['P1-A01-s1', 'failed'],
      ['P1-A02-s1', 'done'],
      ['P1-A03-s1', 'done'],
    ]);
    expect(sets[0]!.error).toBe(
      `image set P1-A01-s1: image ${row!.uri} (channel DNA) changed since it was registered: ` +
        `registered ${row!.checksum}, found sha256:${sha256(replacement)}`,
    );
    // Non-retryable: one attempt in the retry run, no engine attempts burnt on it.
    expect(sets[0]!.attempts).toBe(1);
  });
});

describe('projects never share a bucket or an input prefix', () => {
  it('refuses a new project whose name differs from an existing one only in case or separators', async () => {
    const suffix = uniqueName('x').slice(2);
    const upper = `bi-UPPER_case-${suffix}`;
    const lower = `bi-upper-case-${suffix}`;
    const dir = await plate({ cols: 1 });
    const made = await runCli(['submit', '--project', upper, '--name', 'e1', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin']);
    expect(made.code).toBe(0);
    const refused = await runCli(['submit', '--project', lower, '--name', 'e1', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin']);
    expect(refused.code).toBe(2);
    expect(refused.stderr.trim().split('\n')).toEqual([
      `cpflow: project ${lower}: an existing project is named ${upper}; names that differ only in case, accents or separators ` +
        `(space - _ .) are refused so the two are never confused (use --project "${upper}" or another name)`,
    ]);
    expect(await findProject(await db(), lower)).toBeUndefined();
    expect(await bucketExists(bucketForProject(lower))).toBe(false);
  });

  it('gives Unicode names that used to collapse into one bucket a bucket each, with their inputs intact', async () => {
    const suffix = uniqueName('u').slice(2);
    const names = [`bi ünïcode 项目 ☃ ${suffix}`, `bi ünïcode 项目 ${suffix}`];
    const ids: number[] = [];
    for (const [i, project] of names.entries()) {
      const r = await submit({ project, name: 'plate', folder: await plate({ cols: 2, seed: 20 + i }), grouping: GROUPING_PRESETS.synthetic!.rule, engine: 'builtin' });
      ids.push(r.experimentId);
    }
    const experiments = await Promise.all(ids.map(async (id) => (await getExperiment(await db(), id))!));
    expect(experiments[0]!.bucket).not.toBe(experiments[1]!.bucket);
    expect(experiments.map((e) => e.bucket)).toEqual(names.map(bucketForProject));
    for (const e of experiments) {
      expect(e.input_prefix).toBe(`s3://${e.bucket}/inputs/${e.id}/`);
      expect(await inputsMatchTheirChecksums(e.id)).toEqual({ files: 4, mismatched: [] });
    }
  });

  it('refuses --bucket of another project, a changed bucket, and --s3-prefix into another project’s bucket', async () => {
    const owner = uniqueName('owner');
    const dir = await plate({ cols: 1 });
    const made = await submit({ project: owner, name: 'e', folder: dir, grouping: GROUPING_PRESETS.synthetic!.rule, engine: 'builtin' });
    const intruder = uniqueName('intruder');
    const cases: Array<[string[], string]> = [
      [['--project', intruder, '--bucket', made.bucket], `cpflow: --bucket ${made.bucket}: belongs to project ${owner}; projects never share a bucket`],
      [['--project', owner, '--bucket', 'cpflow-somewhere-else'], `cpflow: --bucket cpflow-somewhere-else: project ${owner} uses bucket ${made.bucket}; a project's bucket cannot change`],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(['submit', ...args, '--name', 'e2', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin']);
      expect({ code: r.code, stderr: r.stderr.trim() }).toEqual({ code: 2, stderr: message });
    }
    const viaPrefix = await runCli(['submit', '--project', intruder, '--name', 'e3', '--s3-prefix', `s3://${made.bucket}/inputs/${made.experimentId}/`, '--grouping', 'synthetic', '--engine', 'builtin']);
    expect(viaPrefix.code).toBe(2);
    expect(viaPrefix.stderr.trim()).toBe(
      `cpflow: --s3-prefix s3://${made.bucket}/inputs/${made.experimentId}/: bucket ${made.bucket} belongs to project ${owner}; projects never share inputs`,
    );
    expect(await findProject(await db(), intruder)).toBeUndefined();
  });
});

describe('a database reset never costs an older experiment its objects', () => {
  it('refuses to write where an experiment of the same id left objects, keeps them, and registers nothing', async () => {
    const project = uniqueName('reset');
    const bucket = bucketForProject(project);
    await ensureBucket(bucket);
    // After a reset, ids start again below ones whose objects are still in the bucket. Plant results
    // for every id the next submit can get (other test files submit meanwhile: a wide margin).
    const [ids] = await (await db()).query<Array<{ maxId: number | bigint | null; next: number | bigint | null }>>(
      `SELECT (SELECT MAX(id) FROM experiment) AS maxId,
              (SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'experiment') AS next`,
    );
    const from = Number(ids?.maxId ?? 0) + 1;
    const to = Math.max(from, Number(ids?.next ?? 0)) + 100;
    for (let id = from; id <= to; id++) await putBytes(bucket, `cpflow/${id}/results/summary.csv`, `experiment ${id} of the old database\n`, 'text/csv');

    const r = await runCli(['submit', '--project', project, '--name', 'after-reset', '--folder', await plate({ cols: 1 }), '--grouping', 'synthetic', '--engine', 'builtin']);
    expect(r.code).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    const named = /already holds s3:\/\/([^/]+)\/cpflow\/(\d+)\/results\/summary\.csv, written for an experiment (\d+) that this database does not know/.exec(lines[0] ?? '');
    expect(named).not.toBeNull();
    expect(named?.[1]).toBe(bucket);
    expect(named?.[2]).toBe(named?.[3]);
    const refusedId = Number(named?.[2]);
    expect((await getBytes(bucket, `cpflow/${refusedId}/results/summary.csv`)).toString()).toBe(`experiment ${refusedId} of the old database\n`);
    expect(await getExperiment(await db(), refusedId)).toBeUndefined();
    expect(await rowCount('SELECT COUNT(*) AS n FROM experiment e JOIN project p ON p.id = e.project_id WHERE p.name = ?', [project])).toBe(0);
    expect(await firstKeyUnder(bucket, 'inputs/')).toBeUndefined();
  });
});

describe('concurrent submits of one name', () => {
  it('10 at once: exactly one experiment, nine refusals in one line, every input matching its checksum', async () => {
    const project = uniqueName('race');
    // Each contender uploads different images, so an overwrite of the winner's inputs would show.
    const dirs = await Promise.all(Array.from({ length: 10 }, (_, i) => plate({ cols: 2, seed: 100 + i, size: 64 })));
    const results = await Promise.all(
      dirs.map((dir) => runCli(['submit', '--project', project, '--name', 'plate', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin'], {}, 240_000)),
    );
    const winners = results.filter((r) => r.code === 0);
    const losers = results.filter((r) => r.code !== 0);
    expect(winners).toHaveLength(1);
    expect(losers.map((r) => r.code)).toEqual(Array(9).fill(2));
    for (const r of losers) {
      const lines = r.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`^cpflow: experiment ${project}/plate already exists( \\(|$)`));
    }
    const pool = await db();
    const rows = await pool.query<Array<{ id: number; status: string }>>(
      'SELECT e.id, e.status FROM experiment e JOIN project p ON p.id = e.project_id WHERE p.name = ?',
      [project],
    );
    expect(rows).toHaveLength(1);
    const id = Number(rows[0]!.id);
    expect(await inputsMatchTheirChecksums(id)).toEqual({ files: 4, mismatched: [] });
    // The winner's images are the ones registered, and nothing of the losers is left in the bucket.
    const winnerDir = dirs[results.indexOf(winners[0]!)]!;
    const e = (await getExperiment(pool, id))!;
    const keys: string[] = [];
    for await (const o of listObjects(e.bucket, 'inputs/')) keys.push(o.key);
    expect(keys.sort()).toEqual(fs.readdirSync(winnerDir).map((f) => `inputs/${id}/${f}`).sort());
    for (const f of fs.readdirSync(winnerDir)) {
      expect(sha256(await getBytes(e.bucket, `inputs/${id}/${f}`))).toBe(sha256(fs.readFileSync(path.join(winnerDir, f))));
    }
  });
});

describe('names are checked before anything is written', () => {
  it('refuses long names, "..", path separators and bad buckets with exit 2, creating no bucket and no row', async () => {
    const dir = await plate({ cols: 1 });
    const cases: Array<{ project: string; args: string[]; message: string }> = [];
    const long = 'n'.repeat(201);
    const add = (args: string[], message: (project: string) => string): void => {
      const project = uniqueName('badname');
      cases.push({ project, args, message: message(project) });
    };
    add(['--name', long], () => `cpflow: --name "${long}" is 201 characters long; at most 200 are allowed`);
    add(['--name', '../escape'], () => 'cpflow: --name "../escape" contains a path separator (/ or \\)');
    add(['--name', 'a\\b'], () => 'cpflow: --name "a\\\\b" contains a path separator (/ or \\)');
    add(['--name', 'x..y'], () => 'cpflow: --name "x..y" contains ".."');
    add(['--name', 'ok', '--bucket', 'Not_A_Bucket'], () => 'cpflow: --bucket "Not_A_Bucket" may hold only lower-case letters, digits, "-" and ".", and must start and end with a letter or digit');
    for (const c of cases) {
      const r = await runCli(['submit', '--project', c.project, ...c.args, '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin']);
      expect({ code: r.code, stderr: r.stderr.trim() }).toEqual({ code: 2, stderr: c.message });
      expect(await findProject(await db(), c.project)).toBeUndefined();
      expect(await bucketExists(bucketForProject(c.project))).toBe(false);
    }
    const longProject = `p${'x'.repeat(128)}`;
    const r = await runCli(['submit', '--project', longProject, '--name', 'e', '--folder', dir, '--grouping', 'synthetic']);
    expect({ code: r.code, stderr: r.stderr.trim() }).toEqual({ code: 2, stderr: `cpflow: --project "${longProject}" is 129 characters long; at most 128 are allowed` });
    expect(await rowCount('SELECT COUNT(*) AS n FROM project WHERE name = ?', [longProject])).toBe(0);
  });
});

describe('what a submitted folder holds is registered or named', () => {
  it('follows symbolic links, lists unmatched and hidden files, and refuses a broken link', async () => {
    const dir = tempDir('links');
    const real = await plate({ cols: 4, seed: 8 });
    const files = fs.readdirSync(real).sort();
    // A01 and A02 as files, A03 through links to files, A04 through a link to a folder.
    for (const f of files.filter((f) => /_A0[12]_/.test(f))) fs.copyFileSync(path.join(real, f), path.join(dir, f));
    for (const f of files.filter((f) => f.includes('_A03_'))) fs.symlinkSync(path.join(real, f), path.join(dir, f));
    const sub = tempDir('links-sub');
    for (const f of files.filter((f) => f.includes('_A04_'))) fs.copyFileSync(path.join(real, f), path.join(sub, f));
    fs.symlinkSync(sub, path.join(dir, 'more'));
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'acquisition notes');
    fs.writeFileSync(path.join(dir, '.DS_Store'), 'finder');
    const project = uniqueName('links');
    const json = await runCli(['submit', '--project', project, '--name', 'all', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin', '--json']);
    expect(json.code).toBe(0);
    const result = JSON.parse(json.stdout) as { experimentId: number; imageSets: number; unmatched: string[]; hidden: string[] };
    expect(result).toMatchObject({ imageSets: 4, unmatched: ['notes.txt'], hidden: ['.DS_Store'] });
    expect(await inputsMatchTheirChecksums(result.experimentId)).toEqual({ files: 8, mismatched: [] });

    const text = await runCli(['submit', '--project', project, '--name', 'all-text', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin']);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('1 files matched no grouping rule and were not registered:\n  notes.txt\n');
    expect(text.stdout).toContain('left out 1 hidden files or folders: .DS_Store');

    fs.symlinkSync(path.join(real, 'gone.tif'), path.join(dir, 'P1_A05_s1_wDNA.tif'));
    const broken = await runCli(['submit', '--project', project, '--name', 'broken', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin']);
    expect({ code: broken.code, stderr: broken.stderr.trim() }).toEqual({
      code: 2,
      stderr: `cpflow: --folder ${dir}: 1 entry is not files cpflow can upload: P1_A05_s1_wDNA.tif is a broken symbolic link (to ${path.join(real, 'gone.tif')})`,
    });
    expect(await rowCount('SELECT COUNT(*) AS n FROM experiment e JOIN project p ON p.id = e.project_id WHERE p.name = ? AND e.name = ?', [project, 'broken'])).toBe(0);
  });

  it('--skip-incomplete registers the complete sets and lists the incomplete ones', async () => {
    const dir = await plate({ cols: 3, seed: 9 });
    fs.rmSync(path.join(dir, 'P1_A02_s1_wActin.tif'));
    const project = uniqueName('incomplete');
    const args = ['submit', '--project', project, '--name', 'plate', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin'];
    const refused = await runCli(args);
    expect({ code: refused.code, stderr: refused.stderr.trim() }).toEqual({
      code: 2,
      stderr: 'cpflow: image set P1-A02-s1 lacks channel Actin (channels found in the file names: Actin, DNA; needed: Actin, DNA); --skip-incomplete registers the complete sets only',
    });
    const skipped = await runCli([...args, '--skip-incomplete']);
    expect(skipped.code).toBe(0);
    expect(skipped.stdout).toContain('2 image sets');
    expect(skipped.stdout).toContain('skipped 1 incomplete image sets (--skip-incomplete):\n  P1-A02-s1 lacks Actin');
    const keys = await (await db()).query<Array<{ set_key: string }>>(
      'SELECT s.set_key FROM image_set s JOIN experiment e ON e.id = s.experiment_id JOIN project p ON p.id = e.project_id WHERE p.name = ? ORDER BY s.set_key',
      [project],
    );
    expect(keys.map((k) => k.set_key)).toEqual(['P1-A01-s1', 'P1-A03-s1']);
  });
});
