import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { ensureStackUp } from '../deploy/local/services';
import { ensureWorkflowBundle } from '../workers/workflow-bundle';

/**
 * `npm test`: bring the real local stack up (installing what is missing into the cache), then run
 * jest with its connection settings in the environment. Extra arguments go to jest.
 * CellProfiler is installed too unless CPFLOW_SKIP_CELLPROFILER=1 (its tests then report skipped).
 */
async function main(): Promise<number> {
  const started = Date.now();
  const env = await ensureStackUp();
  const extra: Record<string, string> = {};
  if (process.env.CPFLOW_SKIP_CELLPROFILER !== '1') {
    try {
      const { installCellProfiler } = await import('../deploy/local/cellprofiler');
      const { cacheDir } = await import('../deploy/local/state');
      const installed = await installCellProfiler(cacheDir(), (line: string) => console.log(line));
      extra.CPFLOW_CELLPROFILER = installed.executable;
    } catch (err) {
      // The CellProfiler tests report themselves skipped with this reason; everything else still runs.
      extra.CPFLOW_CELLPROFILER_UNAVAILABLE = err instanceof Error ? err.message.split('\n')[0] ?? 'unknown' : String(err);
      console.warn(`CellProfiler could not be installed: ${extra.CPFLOW_CELLPROFILER_UNAVAILABLE}`);
    }
  }
  if (process.env.CPFLOW_SKIP_CYTOTABLE !== '1') {
    try {
      const { installCytoTable } = await import('../deploy/local/cytotable');
      const { cacheDir } = await import('../deploy/local/state');
      await installCytoTable(cacheDir(), (line: string) => console.log(line));
    } catch (err) {
      extra.CPFLOW_CYTOTABLE_UNAVAILABLE = err instanceof Error ? err.message.split('\n')[0] ?? 'unknown' : String(err);
      console.warn(`CytoTable could not be installed: ${extra.CPFLOW_CYTOTABLE_UNAVAILABLE}`);
    }
  }
  ensureChromium();
  ensureTini();
  // Workers load the pre-built workflow bundle; build it once here when the sources changed.
  await ensureWorkflowBundle((line) => console.log(line));
  console.log(`local stack ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const jest = require.resolve('jest/bin/jest');
  const res = spawnSync(process.execPath, [jest, ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, ...env, ...extra },
  });
  return res.status ?? 1;
}

/** The report tests render in Debian's Chromium; install it when we can (root), else they say skipped. */
function ensureChromium(): void {
  if (fs.existsSync('/usr/bin/chromium') || process.env.CPFLOW_SKIP_CHROMIUM === '1') return;
  if (process.getuid?.() !== 0) {
    console.warn('Chromium is missing (apt-get install chromium): the report rendering tests will be skipped');
    return;
  }
  console.log('installing Debian chromium for the report rendering tests…');
  const apt = (args: string[]): number | null =>
    spawnSync('apt-get', args, { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status;
  if (apt(['install', '-y', '--no-install-recommends', 'chromium']) !== 0) {
    apt(['update']);
    apt(['install', '-y', '--no-install-recommends', 'chromium']);
  }
}

/** The image's PID 1 (tini): the runtime-command test runs each role under it, as the image does. */
function ensureTini(): void {
  if (fs.existsSync('/usr/bin/tini') || process.getuid?.() !== 0) return;
  console.log('installing Debian tini for the runtime-command test…');
  const apt = (args: string[]): number | null =>
    spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=600', ...args], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status;
  if (apt(['install', '-y', '--no-install-recommends', 'tini']) !== 0) {
    apt(['update']);
    apt(['install', '-y', '--no-install-recommends', 'tini']);
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`npm test: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
