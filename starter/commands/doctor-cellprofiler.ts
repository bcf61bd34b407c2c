/**
 * `cpflow doctor`'s CellProfiler check: the configured executable must run every module of the
 * module-coverage pipeline. The result is cached per environment (CellProfiler build, Python, sha256
 * of the package set) in the cache dir, so doctor starts CellProfiler's pipeline only the first time
 * it sees an environment (or with `--recheck`); otherwise it costs the environment probe alone.
 */
import { cacheDir } from '../../deploy/local/state';
import { cachedModuleCoverage, describeModuleCoverage } from '../../deploy/local/module-coverage';

export async function cellProfilerDoctorCheck(executable: string, opts: { fresh?: boolean } = {}): Promise<string> {
  const result = await cachedModuleCoverage(cacheDir(), executable, { fresh: opts.fresh });
  const line = `${executable}: ${describeModuleCoverage(result)}${result.cached ? `, checked ${result.checkedAt}` : ''}`;
  if (!result.ok) throw new Error(line);
  return line;
}
