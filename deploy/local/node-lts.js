#!/usr/bin/env node
// Plain JavaScript on purpose: it runs first, under whatever Node the machine has (Node 20 is enough),
// before any dependency is installed.
//
//   node deploy/local/node-lts.js <entry.ts> [args…]   run a TypeScript entry point under cpflow's Node LTS
//   node deploy/local/node-lts.js --bin-dir             print the directory of that Node's binary (for PATH)
//
// When the running Node is older than the pinned LTS major (deploy/node-lts.json), the pinned release is
// fetched once from the npm registry (the `node-<platform>-<arch>` package, integrity checked) into
// <cache>/node/v<version>/ and everything is re-run under it, with its directory first on PATH so child
// processes (jest, workers, the CLI) get the same Node. The locked npm dependencies are installed when
// missing or stale (deploy/local/ensure-deps.js), by npm running under that Node.
'use strict';
const { spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..', '..');
const pin = JSON.parse(fs.readFileSync(path.join(root, 'deploy', 'node-lts.json'), 'utf8'));
const requiredMajor = Number(pin.version.split('.')[0]);
const log = (line) => process.stderr.write(`[node-lts] ${line}\n`);

function cacheDir() {
  const fromEnv = process.env.CPFLOW_CACHE_DIR;
  return path.resolve(fromEnv && fromEnv.trim() !== '' ? fromEnv : path.join(os.homedir(), '.cache', 'cpflow'));
}

function npmCommand() {
  // Under `npm run`, npm_execpath is npm's own CLI script: run it with the chosen Node, not the system's.
  const execPath = process.env.npm_execpath;
  if (execPath && /npm-cli\.js$/.test(execPath)) return { command: process.execPath, prefix: [execPath] };
  return { command: process.platform === 'win32' ? 'npm.cmd' : 'npm', prefix: [] };
}

/** The Node binary to use: this one when it is new enough, else the pinned LTS from the cache. */
function ensureNode() {
  if (Number(process.versions.node.split('.')[0]) >= requiredMajor) return process.execPath;
  const target = path.join(cacheDir(), 'node', `v${pin.version}`);
  const binary = path.join(target, 'bin', 'node');
  if (fs.existsSync(binary)) return binary;
  const pkg = `node-${process.platform}-${process.arch}`;
  log(`Node ${process.versions.node} is older than cpflow's Node ${requiredMajor} LTS: fetching ${pkg}@${pin.version} into ${target}`);
  const staging = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-node-'));
  try {
    const npm = npmCommand();
    const packed = spawnSync(npm.command, [...npm.prefix, 'pack', `${pkg}@${pin.version}`, '--pack-destination', staging, '--silent'], {
      stdio: ['ignore', 'pipe', 'inherit'],
      encoding: 'utf8',
    });
    if (packed.status !== 0) throw new Error(`npm pack ${pkg}@${pin.version} failed (exit ${packed.status})`);
    const tarball = path.join(staging, packed.stdout.trim().split('\n').pop());
    const expected = pin.npmPackageIntegrity[pkg];
    if (expected) {
      const actual = `sha512-${crypto.createHash('sha512').update(fs.readFileSync(tarball)).digest('base64')}`;
      if (actual !== expected) throw new Error(`${pkg}@${pin.version}: integrity ${actual} does not match the pinned ${expected}`);
    }
    const unpacked = path.join(staging, 'unpacked');
    fs.mkdirSync(unpacked);
    const tar = spawnSync('tar', ['-xzf', tarball, '-C', unpacked, 'package/bin/node'], { stdio: 'inherit' });
    if (tar.status !== 0) throw new Error(`could not unpack ${tarball}`);
    const ready = path.join(staging, 'ready');
    fs.mkdirSync(path.join(ready, 'bin'), { recursive: true });
    fs.renameSync(path.join(unpacked, 'package', 'bin', 'node'), path.join(ready, 'bin', 'node'));
    fs.chmodSync(path.join(ready, 'bin', 'node'), 0o755);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    try {
      fs.renameSync(ready, target); // atomic: a concurrent bootstrap either wins or finds it done
    } catch (err) {
      if (!fs.existsSync(binary)) throw err;
    }
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
  log(`Node ${pin.version} ready`);
  return binary;
}

function main() {
  const args = process.argv.slice(2);
  const node = ensureNode();
  const binDir = path.dirname(node);
  if (args[0] === '--bin-dir') {
    process.stdout.write(`${binDir}\n`);
    return;
  }
  const env = { ...process.env, PATH: `${binDir}${path.delimiter}${process.env.PATH ?? ''}` };
  const deps = spawnSync(node, [path.join(__dirname, 'ensure-deps.js')], { stdio: 'inherit', env, cwd: root });
  if (deps.status !== 0) process.exit(deps.status ?? 1);
  if (args.length === 0) return;
  // One child process: `node --import tsx entry`, so signals sent to it reach the program itself.
  const child = spawn(node, ['--import', 'tsx', ...args], { stdio: 'inherit', env });
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, () => child.kill(signal));
  child.on('exit', (code, signal) => {
    if (signal) {
      process.removeAllListeners(signal);
      process.kill(process.pid, signal);
    }
    process.exit(code ?? 1);
  });
}

try {
  main();
} catch (err) {
  log(err instanceof Error ? err.message : String(err));
  process.exit(1);
}
