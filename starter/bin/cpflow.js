#!/usr/bin/env node
// The `cpflow` command of the npm package: the compiled CLI (npm run build writes dist/; `npm pack`
// builds it first).
'use strict';
const path = require('node:path');
const fs = require('node:fs');

const cli = path.join(__dirname, '..', '..', 'dist', 'starter', 'cli.js');
if (!fs.existsSync(cli)) {
  process.stderr.write(`cpflow: ${cli} is missing; run \`npm run build\` in ${path.resolve(__dirname, '..', '..')}\n`);
  process.exit(1);
}
require(cli).main(process.argv).then((code) => process.exit(code));
