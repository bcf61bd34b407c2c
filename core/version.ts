import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import pkg from '../package.json';

/** What produced an output: recorded in every provenance.json. */
export const CPFLOW_VERSION: string = pkg.version;

let commit: string | undefined;

/** Git commit of this checkout, or CPFLOW_GIT_COMMIT (set in container images, which carry no .git). */
export function gitCommit(): string {
  if (commit !== undefined) return commit;
  commit = process.env.CPFLOW_GIT_COMMIT ?? 'unknown';
  if (!process.env.CPFLOW_GIT_COMMIT) {
    try {
      commit = execFileSync('git', ['rev-parse', 'HEAD'], {
        // Inside the checkout from core/ and from dist/core/ alike (two levels up leaves it when run from source).
        cwd: path.join(__dirname, '..'),
        stdio: ['ignore', 'pipe', 'ignore'],
        timeout: 5000,
      })
        .toString()
        .trim();
    } catch {
      commit = 'unknown';
    }
  }
  return commit;
}

export function workerIdentity(): { host: string; pid: number } {
  return { host: os.hostname(), pid: process.pid };
}
