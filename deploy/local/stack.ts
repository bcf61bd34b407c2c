/**
 * `npm run stack -- <command>`: the local development stack (Temporal dev server, MariaDB, MinIO)
 * installed into a cache outside the repository (CPFLOW_CACHE_DIR, default ~/.cache/cpflow).
 *
 *   up [--secure|--plain]   install what is missing and start every service (idempotent); --secure: TLS
 *                           everywhere (private CA, mTLS to Temporal through nginx, X509 for MariaDB's
 *                           accounts, HTTPS MinIO), kept until --plain; CPFLOW_STACK_SECURE=1 does the same
 *   down [--wipe]           stop every service; --wipe also deletes their data and the state
 *   status                  running/stopped, pid and ports of each service
 *   env                     connection settings as KEY=value lines (for `eval` or dotenv files)
 *   stop|start <service>    stop or restart one service with the same ports, data and credentials
 *   install-cellprofiler    install CellProfiler into <cache>/cellprofiler-venv
 *
 * Importing this file runs nothing; the programmatic API is re-exported from ./services.
 */
import { Command } from 'commander';
import { installCellProfiler } from './cellprofiler';
import {
  ensureStackUp,
  isServiceName,
  SERVICE_NAMES,
  stackEnv,
  stackStatus,
  startService,
  StackError,
  stopService,
  stopStack,
  type ServiceName,
  type StackEnv,
} from './services';
import { cacheDir } from './state';

export * from './services';

function printEnv(env: StackEnv): void {
  for (const [key, value] of Object.entries(env)) {
    if (value !== undefined) process.stdout.write(`${key}=${value}\n`);
  }
}

function parseServiceName(value: string): ServiceName {
  if (!isServiceName(value)) throw new StackError(`unknown service "${value}"; expected one of ${SERVICE_NAMES.join(', ')}`);
  return value;
}


/**
 * Hands over to deploy/local/cellprofiler.ts, which another part of the project owns. It is loaded
 * by path at run time so this file compiles and runs whether or not that module exists yet.
 */
async function installCellProfilerCommand(): Promise<void> {
  const installed = await installCellProfiler(cacheDir(), (line) => process.stderr.write(`[cellprofiler] ${line}\n`));
  process.stderr.write(`[cellprofiler] ${installed.version} at ${installed.executable} (${installed.seconds.toFixed(1)} s)\n`);
}

function buildProgram(): Command {
  const program = new Command('stack').description('local cpflow stack: Temporal, MariaDB and MinIO on 127.0.0.1');

  program
    .command('up')
    .description('install what is missing and start every service')
    .option('-q, --quiet', 'no progress lines')
    .option('--secure', 'TLS everywhere: mTLS to Temporal, TLS + client certificates to MariaDB, HTTPS to MinIO (kept until --plain)')
    .option('--plain', 'back to plaintext on 127.0.0.1')
    .action(async (options: { quiet?: boolean; secure?: boolean; plain?: boolean }) => {
      if (options.secure && options.plain) throw new StackError('--secure and --plain exclude each other');
      const started = Date.now();
      const env = await ensureStackUp({ quiet: options.quiet, secure: options.secure ? true : options.plain ? false : undefined });
      if (!options.quiet) {
        process.stderr.write(`[stack] up in ${((Date.now() - started) / 1000).toFixed(1)} s; Temporal UI ${env.CPFLOW_TEMPORAL_UI_URL}\n`);
      }
    });

  program
    .command('down')
    .description('stop every service (data kept unless --wipe)')
    .option('--wipe', 'also delete the data directories and the state file')
    .action(async (options: { wipe?: boolean }) => stopStack({ wipe: options.wipe }));

  program
    .command('status')
    .description('show each service')
    .action(async () => {
      for (const service of await stackStatus()) {
        const ports = Object.entries(service.ports)
          .map(([label, port]) => `${label}=${port}`)
          .join(' ');
        const pid = service.running && service.pid !== null ? `pid ${service.pid}` : 'pid -';
        process.stdout.write(`${service.name.padEnd(9)} ${(service.running ? 'running' : 'stopped').padEnd(8)} ${pid.padEnd(11)} ${ports}\n`);
      }
    });

  program
    .command('env')
    .description('print connection settings as KEY=value lines')
    .action(async () => printEnv(await stackEnv()));

  program
    .command('stop <service>')
    .description(`stop one service (${SERVICE_NAMES.join('|')})`)
    .action(async (service: string) => stopService(parseServiceName(service)));

  program
    .command('start <service>')
    .description(`start one service again with the same ports, data and credentials (${SERVICE_NAMES.join('|')})`)
    .action(async (service: string) => startService(parseServiceName(service)));

  program
    .command('install-cellprofiler')
    .description('install CellProfiler into <cache>/cellprofiler-venv')
    .action(installCellProfilerCommand);

  return program;
}

async function main(argv: readonly string[]): Promise<void> {
  try {
    await buildProgram().parseAsync([...argv]);
  } catch (error) {
    if (error instanceof StackError) {
      process.stderr.write(`stack: ${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
}

if (require.main === module) {
  void main(process.argv);
}
