import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { bundleWorkflowCode } from '@temporalio/worker';
import { z } from 'zod';

/** OpenTelemetry's workflow interceptors (trace context from the starter through to every activity). */
const OTEL_WORKFLOW_INTERCEPTORS = require.resolve('@temporalio/interceptors-opentelemetry/lib/workflow-interceptors');

/**
 * The workflow code, bundled once ahead of time (as the Temporal samples' `production` does) rather
 * than by every worker at start-up. `npm run build` writes it; `npm test`, the demo and
 * `npm run worker` build it when it is missing or older than the sources. A worker only loads it,
 * and refuses a bundle that no longer matches the workflow sources beside it.
 */

/** The package root, also when this file runs compiled from dist/workers/ (the image, the npm package). */
const ROOT = path.basename(path.resolve(__dirname, '..')) === 'dist' ? path.resolve(__dirname, '..', '..') : path.resolve(__dirname, '..');
/** Sources that end up in the bundle (workflow code and the model it imports) plus the locked dependencies. */
const SOURCE_ROOTS = ['workflows', path.join('core', 'model')];
export const WORKFLOW_BUNDLE = path.join(ROOT, 'dist', 'workflow-bundle.js');
const META = `${WORKFLOW_BUNDLE}.json`;

const metaSchema = z.object({ sourcesSha256: z.string().nullable(), builtAt: z.string() });

/** sha256 over the bundled sources, or null where they are absent (a compiled image ships no .ts). */
function sourcesSha256(): string | null {
  const files: string[] = [];
  for (const dir of SOURCE_ROOTS) {
    const full = path.join(ROOT, dir);
    if (!fs.existsSync(full)) return null;
    for (const entry of fs.readdirSync(full, { recursive: true, encoding: 'utf8' })) {
      if (/\.[cm]?[jt]s$/.test(entry)) files.push(path.join(dir, entry));
    }
  }
  if (files.length === 0) return null;
  const hash = createHash('sha256');
  for (const file of [...files.sort(), 'package-lock.json']) {
    const full = path.join(ROOT, file);
    if (!fs.existsSync(full)) continue;
    hash.update(`${file}\0`).update(fs.readFileSync(full)).update('\0');
  }
  return hash.digest('hex');
}

function readMeta(): z.infer<typeof metaSchema> | undefined {
  try {
    return metaSchema.parse(JSON.parse(fs.readFileSync(META, 'utf8')));
  } catch {
    return undefined;
  }
}

/** Why the bundle cannot be used as it is, or undefined when it is current. */
export function bundleProblem(): string | undefined {
  if (!fs.existsSync(WORKFLOW_BUNDLE)) return `no workflow bundle at ${WORKFLOW_BUNDLE}`;
  const current = sourcesSha256();
  const meta = readMeta();
  if (current !== null && meta?.sourcesSha256 !== current) return `the workflow bundle at ${WORKFLOW_BUNDLE} is older than the workflow sources`;
  return undefined;
}

export async function buildWorkflowBundle(log: (line: string) => void = () => undefined): Promise<string> {
  const started = Date.now();
  const { code } = await bundleWorkflowCode({
    workflowsPath: require.resolve('../workflows'),
    // Always in the bundle; the worker gives them a no-op span sink unless tracing is on (run.ts).
    workflowInterceptorModules: [OTEL_WORKFLOW_INTERCEPTORS],
    logger: { log: () => undefined, info: () => undefined, warn: (m) => log(m), error: (m) => log(m), debug: () => undefined, trace: () => undefined },
  });
  await fs.promises.mkdir(path.dirname(WORKFLOW_BUNDLE), { recursive: true });
  const temporary = `${WORKFLOW_BUNDLE}.${process.pid}.tmp`;
  await fs.promises.writeFile(temporary, code);
  await fs.promises.rename(temporary, WORKFLOW_BUNDLE);
  await fs.promises.writeFile(META, JSON.stringify({ sourcesSha256: sourcesSha256(), builtAt: new Date().toISOString() }, null, 2));
  log(`workflow bundle written to ${WORKFLOW_BUNDLE} (${(code.length / 1024).toFixed(0)} KiB) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return WORKFLOW_BUNDLE;
}

/** Build the bundle only when it is missing or stale. */
export async function ensureWorkflowBundle(log: (line: string) => void = () => undefined): Promise<string> {
  const problem = bundleProblem();
  if (problem === undefined) return WORKFLOW_BUNDLE;
  log(`${problem}: building it`);
  return buildWorkflowBundle(log);
}

/** For workers: the bundle's path, or a clear error saying how to build it. */
export function workflowBundlePath(): string {
  const problem = bundleProblem();
  if (problem !== undefined) throw new Error(`${problem}; run \`npm run build\``);
  return WORKFLOW_BUNDLE;
}

if (require.main === module) {
  const onlyIfStale = process.argv.includes('--if-stale');
  (onlyIfStale ? ensureWorkflowBundle(console.log) : buildWorkflowBundle(console.log)).then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(`workflow bundle: ${err instanceof Error ? err.message : String(err)}`);
      process.exit(1);
    },
  );
}
