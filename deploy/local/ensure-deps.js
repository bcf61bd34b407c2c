#!/usr/bin/env node
// Plain JavaScript on purpose: it runs before any dependency is installed, so `npm run demo` and
// `npm test` work on a fresh clone. Installs the locked dependencies when they are missing or stale.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..', '..');
const marker = path.join(root, 'node_modules', '.package-lock.json');
const lock = path.join(root, 'package-lock.json');
const stale = !fs.existsSync(marker) || fs.statSync(marker).mtimeMs < fs.statSync(lock).mtimeMs;
if (stale) {
  console.error('installing npm dependencies (npm ci)…');
  // Under `npm run`, npm_execpath is npm's own CLI: run it with this Node (cpflow's LTS, see node-lts.js).
  const npmCli = process.env.npm_execpath && /npm-cli\.js$/.test(process.env.npm_execpath) ? process.env.npm_execpath : undefined;
  const res = npmCli
    ? spawnSync(process.execPath, [npmCli, 'ci', '--no-audit', '--no-fund'], { cwd: root, stdio: [0, 2, 2] })
    : spawnSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['ci', '--no-audit', '--no-fund'], { cwd: root, stdio: [0, 2, 2] });
  if (res.status !== 0) {
    console.error('npm ci failed: see the output above');
    process.exit(res.status ?? 1);
  }
}
