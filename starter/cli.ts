#!/usr/bin/env node
import { Command, type Command as CommandType } from 'commander';
import { z } from 'zod';
import { validateSettings } from '../core/config';
import { closeDb } from '../core/db';
import { ConfigError, describeError as describe, isCredentialFailure, UsageError } from '../core/errors';
import { ExperimentFileError } from '../core/experiment-file';
import { GroupingError } from '../core/grouping';
import { LoadDataError } from '../core/load-data';
import { PipelineError } from '../core/pipeline/cppipe';
import { s3Endpoint } from '../core/s3';
import { CPFLOW_VERSION, gitCommit } from '../core/version';
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
 * 2 for bad arguments, settings, credentials or input (commander's own errors included), 1 for everything
 * else. With `--json` (every command has it) stdout carries one JSON document, the result or
 * `{"error": {"message", "kind", "exitCode"}}`, and nothing else.
 */

/** `cpflow 0.1.0 (commit abc123…)`: the same version provenance.json records. */
export const versionLine = (): string => `cpflow ${CPFLOW_VERSION} (commit ${gitCommit()})`;

const program = new Command()
  .name('cpflow')
  .description('Durable CellProfiler runs on Temporal, MariaDB and S3')
  .version(versionLine(), '-V, --version', 'print the version and exit')
  .showHelpAfterError(false)
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

/** Every command accepts --json and reports its own usage errors through exitOverride. */
function conventions(command: CommandType, json: boolean): void {
  for (const sub of command.commands) {
    sub.exitOverride();
    if (!sub.options.some((option) => option.long === '--json')) sub.option('--json', 'machine-readable output', false);
    // In JSON mode commander's own messages would break the one-document contract: main() reports them.
    sub.configureOutput({ writeErr: (text) => (json ? undefined : process.stderr.write(text)) });
    conventions(sub, json);
  }
}

/** One line for any failure; services are named with where they were looked for. */
export function describeError(err: unknown): string {
  if (err instanceof z.ZodError) return err.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
  return describe(err, s3Endpoint);
}

const USAGE_ERRORS = [UsageError, ConfigError, GroupingError, PipelineError, SubmitError, LoadDataError, ExperimentFileError];

function reportError(json: boolean, kind: string, message: string, exitCode: number): number {
  if (json) console.log(JSON.stringify({ error: { message, kind, exitCode } }, null, 2));
  else console.error(`cpflow: ${message}`);
  return exitCode;
}

async function main(argv: string[]): Promise<number> {
  const json = argv.slice(2).includes('--json');
  program.configureOutput({ writeErr: (text) => (json ? undefined : process.stderr.write(text)) });
  conventions(program, json);
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    // `--help` and `--version` succeed; help shown because no command was given (`commander.help`,
    // exit code 1) is a usage error like any other.
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || (e.code === 'commander.help' && e.exitCode === 0)) return 0;
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) {
      // Unknown command or option, missing argument, bad value: a usage error (commander printed it in text mode).
      const message = (e.message ?? 'invalid arguments').replace(/^error: /, '');
      return json ? reportError(true, 'usage', message, 2) : 2;
    }
    const usage = USAGE_ERRORS.some((type) => err instanceof type) || isCredentialFailure(err);
    const kind = usage ? (err instanceof ConfigError ? 'config' : isCredentialFailure(err) ? 'credentials' : 'usage') : err instanceof Error ? err.name : 'error';
    return reportError(json, kind, describeError(err), usage ? 2 : 1);
  } finally {
    await closeDb().catch(() => undefined);
  }
}

if (require.main === module) {
  void main(process.argv).then((code) => process.exit(code));
}

export { main };
