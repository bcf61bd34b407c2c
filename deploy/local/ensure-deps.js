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
  console.log('installing npm dependencies (npm ci)…');
  const res = spawnSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['ci', '--no-audit', '--no-fund'], {
    cwd: root,
    stdio: 'inherit',
  });
  if (res.status !== 0) {
    console.error('npm ci failed: see the output above');
    process.exit(res.status ?? 1);
  }
}
