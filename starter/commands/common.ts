import { InvalidArgumentError } from 'commander';
import { db, findExperimentByName, getExperiment, type ExperimentRow } from '../../core/db';
import { UsageError } from '../../core/errors';
import { canonicalName } from '../../core/naming';

/** Argument parsers and lookups shared by the CLI's commands. */

export const intArg =
  (name: string, min = 1) =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}, got "${v}"`);
    return n;
  };

export const fractionArg = (v: string): number => {
  const n = Number(v);
  if (!(n >= 0 && n <= 1)) throw new InvalidArgumentError(`must be a number from 0 to 1, got "${v}"`);
  return n;
};

/** `12`, or `project/name`. */
export async function resolveExperiment(ref: string): Promise<ExperimentRow> {
  const pool = await db();
  let e: ExperimentRow | undefined;
  if (/^\d+$/.test(ref)) e = await getExperiment(pool, Number(ref));
  else {
    const m = /^([^/]+)\/(.+)$/.exec(ref);
    if (!m || !m[1] || !m[2]) throw new UsageError(`experiment "${ref}": give its id or <project>/<name>`);
    e = await findExperimentByName(pool, canonicalName(m[1]), canonicalName(m[2]));
  }
  if (!e) throw new UsageError(`experiment "${ref}" does not exist`);
  return e;
}

export function print(json: boolean, value: unknown, text: () => string): void {
  console.log(json ? JSON.stringify(value, null, 2) : text());
}
