import fs from 'node:fs';
import path from 'node:path';
import { ensureStackUp, stopStack, type StackEnv } from '../../deploy/local/services';
import { cacheDir } from '../../deploy/local/state';
import { preparePrivateStack } from '../bench/isolation';

/**
 * A secure local stack of a test's own (`<cache dir>-<suffix>`, reusing the shared stack's installed
 * binaries, like the fault drills' private stack), so switching to TLS or to another address never
 * disturbs the shared stack other test files run against.
 */
export function privateCacheDir(suffix: string): string {
  return `${cacheDir().replace(/\/+$/, '')}-${suffix}`;
}

/** Settings a child process must not inherit from the shared stack (they would point it elsewhere). */
export const STACK_VARIABLES = /^CPFLOW_(TEMPORAL|DB|S3)_|^TEMPORAL_/;

export function withoutStackSettings(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([key]) => !STACK_VARIABLES.test(key)));
}

/**
 * Bring up the private stack, secure, on `host`, and return its settings. Must run while
 * process.env.CPFLOW_CACHE_DIR is the private one (the stack library reads it).
 */
export async function useSecureStack(suffix: string, host = '127.0.0.1'): Promise<{ cache: string; env: StackEnv }> {
  const shared = cacheDir();
  const own = privateCacheDir(suffix);
  preparePrivateStack(shared, own);
  process.env.CPFLOW_CACHE_DIR = own;
  const env = await ensureStackUp({ quiet: true, secure: true, host });
  return { cache: own, env };
}

/** Stop the private stack and delete its data (installs are kept for the next run). */
export async function dropSecureStack(cache: string): Promise<void> {
  const previous = process.env.CPFLOW_CACHE_DIR;
  process.env.CPFLOW_CACHE_DIR = cache;
  try {
    if (fs.existsSync(path.join(cache, 'stack', 'state.json'))) await stopStack({ quiet: true, wipe: true });
  } finally {
    process.env.CPFLOW_CACHE_DIR = previous;
  }
}

/** Every process's command line on this machine, to show no secret is visible in `ps`. */
export function allCommandLines(): string[] {
  const lines: string[] = [];
  for (const entry of fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    try {
      lines.push(fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' '));
    } catch {
      // the process ended while we looked
    }
  }
  return lines;
}
