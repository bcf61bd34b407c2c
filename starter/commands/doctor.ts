import type { Command } from 'commander';
import { configuredCellProfiler, configuredPlugins, pluginFiles } from '../../core/cellprofiler';
import { dbConfig, s3Config, temporalConfig, workerConfig } from '../../core/config';
import { db } from '../../core/db';
import { describeError } from '../../core/errors';
import { ensureBucket, s3Endpoint } from '../../core/s3';
import { withClient } from '../../core/temporal';

/** `cpflow doctor`: configuration and every service, one line each. */
export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description('check configuration and connectivity')
    .action(async () => {
      const checks: Array<[string, () => Promise<string>]> = [
        [
          'configuration',
          async () => {
            temporalConfig();
            dbConfig();
            s3Config();
            workerConfig();
            return 'valid';
          },
        ],
        [
          'MariaDB',
          async () => {
            const cfg = dbConfig();
            await db();
            return `${cfg.CPFLOW_DB_HOST}:${cfg.CPFLOW_DB_PORT}/${cfg.CPFLOW_DB_NAME} (schema migrated)`;
          },
        ],
        [
          'S3',
          async () => {
            await ensureBucket('cpflow-doctor');
            return `${s3Endpoint()} (bucket create/read ok)`;
          },
        ],
        [
          'Temporal',
          async () => {
            await withClient((client) => client.workflowService.getSystemInfo({}));
            return temporalConfig().CPFLOW_TEMPORAL_ADDRESS;
          },
        ],
        [
          'CellProfiler',
          async () => {
            const exe = workerConfig().CPFLOW_CELLPROFILER;
            if (!exe) return 'not configured (CPFLOW_CELLPROFILER unset): the builtin engine is used';
            if (!configuredCellProfiler()) throw new Error(`CPFLOW_CELLPROFILER=${exe} does not exist`);
            return `${exe} (this worker polls the cellprofiler queue)`;
          },
        ],
        [
          'plugins',
          async () => {
            const dir = configuredPlugins();
            if (!dir) return 'none (CPFLOW_CELLPROFILER_PLUGINS unset)';
            const files = await pluginFiles(dir);
            return `${dir}: ${files.map((f) => `${f.file} (sha256 ${f.sha256.slice(0, 12)}…)`).join(', ') || 'no files'}`;
          },
        ],
      ];
      let failed = 0;
      for (const [name, check] of checks) {
        try {
          console.log(`ok    ${name.padEnd(13)} ${await check()}`);
        } catch (err) {
          failed++;
          console.log(`FAIL  ${name.padEnd(13)} ${describeError(err, s3Endpoint)}`);
        }
      }
      if (failed) process.exitCode = 1;
    });
}
