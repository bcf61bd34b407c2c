import { Command } from 'commander';
import { z } from 'zod';
import { closeDb } from '../core/db';
import { ConfigError, describeError as describe, UsageError } from '../core/errors';
import { ExperimentFileError } from '../core/experiment-file';
import { GroupingError } from '../core/grouping';
import { LoadDataError } from '../core/load-data';
import { PipelineError } from '../core/pipeline/cppipe';
import { s3Endpoint } from '../core/s3';
import { registerAnalyzeLocal } from './commands/analyze-local';
import { registerControl } from './commands/control';
import { registerDoctor } from './commands/doctor';
import { registerStatus } from './commands/status';
import { registerSubmit } from './commands/submit';
import { registerWatch } from './commands/watch';
import { SubmitError } from './submit';

/** `cpflow`: the starter CLI. Every failure ends in one line naming what is wrong and a non-zero exit. */

const program = new Command()
  .name('cpflow')
  .description('Durable CellProfiler runs on Temporal, MariaDB and S3')
  .showHelpAfterError(false)
  .configureOutput({ writeErr: (s) => process.stderr.write(s) })
  .exitOverride();

registerSubmit(program);
registerWatch(program);
registerStatus(program);
registerControl(program);
registerDoctor(program);
registerAnalyzeLocal(program);

/** One line for any failure; services are named with where they were looked for. */
export function describeError(err: unknown): string {
  if (err instanceof z.ZodError) return err.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
  return describe(err, s3Endpoint);
}

const USAGE_ERRORS = [UsageError, ConfigError, GroupingError, PipelineError, SubmitError, LoadDataError, ExperimentFileError];

async function main(argv: string[]): Promise<number> {
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) return e.exitCode ?? 2; // commander printed it
    console.error(`cpflow: ${describeError(err)}`);
    return USAGE_ERRORS.some((type) => err instanceof type) ? 2 : 1;
  } finally {
    await closeDb().catch(() => undefined);
  }
}

if (require.main === module) {
  void main(process.argv).then((code) => process.exit(code));
}

export { main };
