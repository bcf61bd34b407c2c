import fs from 'node:fs';
import path from 'node:path';
import { buildWorkflowBundle } from '../workers/workflow-bundle';

/**
 * The second half of `npm run build` (after `tsc -p tsconfig.build.json`), run as compiled JavaScript
 * from dist/: copies what tsc does not (the SQL migrations, the activities' Python scripts) next to the compiled code, and writes the
 * pre-built workflow bundle the workers load. The Dockerfile's build stage runs exactly this.
 */
const DIST = path.resolve(__dirname, '..');
const ROOT = path.resolve(DIST, '..');

async function main(): Promise<void> {
  const from = path.join(ROOT, 'core', 'db', 'migrations');
  const to = path.join(DIST, 'core', 'db', 'migrations');
  fs.mkdirSync(to, { recursive: true });
  for (const file of fs.readdirSync(from).filter((f) => f.endsWith('.sql'))) fs.copyFileSync(path.join(from, file), path.join(to, file));
  // Python the activities run beside their compiled code (the warm CellProfiler server, the profiles step).
  const activities = path.join(ROOT, 'activities');
  for (const file of fs.readdirSync(activities, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.py'))) {
    const target = path.join(DIST, 'activities', file);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.copyFileSync(path.join(activities, file), target);
  }
  await buildWorkflowBundle((line) => console.log(line));
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`build: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
