import { Command } from 'commander';
import { z } from 'zod';
import { validateSettings } from '../core/config';
import { closeDb } from '../core/db';
import { ConfigError, describeError as describe, isCredentialFailure, UsageError } from '../core/errors';
import { GroupingError } from '../core/grouping';
import { PipelineError } from '../core/pipeline/cppipe';
import { s3Endpoint } from '../core/s3';
import { registerAnalyzeLocal } from './commands/analyze-local';
import { registerControl } from './commands/control';
import { registerDoctor } from './commands/doctor';
import { registerMigrate } from './commands/migrate';
import { registerStatus } from './commands/status';
import { registerSubmit } from './commands/submit';
import { registerWatch } from './commands/watch';
import { SubmitError } from './submit';

/**
 * `cpflow`: the starter CLI. Every failure ends in one line naming what is wrong and a non-zero exit:
 * 2 for bad arguments (commander's own errors included), settings, credentials or input; 1 otherwise.
 */

const program = new Command()
  .name('cpflow')
  .description('Durable CellProfiler runs on Temporal, MariaDB and S3')
  .showHelpAfterError(false)
  .configureOutput({ writeErr: (s) => process.stderr.write(s) })
  .exitOverride()
  // Every setting is checked before any command runs, whether or not that command uses it (doctor
  // reports a bad setting as one of its checks instead).
  .hook('preAction', (_program, command) => {
    if (command.name() !== 'doctor') validateSettings();
  });

registerSubmit(program);
registerWatch(program);
registerStatus(program);
registerControl(program);
registerDoctor(program);
registerMigrate(program);
registerAnalyzeLocal(program);

/** One line for any failure; services are named with where they were looked for. */
export function describeError(err: unknown): string {
  if (err instanceof z.ZodError) return err.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
  return describe(err, s3Endpoint);
}

const USAGE_ERRORS = [UsageError, ConfigError, GroupingError, PipelineError, SubmitError];

async function main(argv: string[]): Promise<number> {
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
    // Commander printed its message (unknown option, missing argument, invalid choice, no command…).
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) return 2;
    console.error(`cpflow: ${describeError(err)}`);
    return USAGE_ERRORS.some((type) => err instanceof type) || isCredentialFailure(err) ? 2 : 1;
  } finally {
    await closeDb().catch(() => undefined);
  }
}

if (require.main === module) {
  void main(process.argv).then((code) => process.exit(code));
}

export { main };
