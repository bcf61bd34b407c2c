import fs from 'node:fs';
import type { Command } from 'commander';
import { configuredCellProfiler } from '../../core/cellprofiler';
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
            return exe;
          },
        ],
        [
          'profiles',
          async () => {
            const python = workerConfig().CPFLOW_PROFILES_PYTHON;
            if (!python) return 'not configured (CPFLOW_PROFILES_PYTHON unset): experiments with --platemap fail in their profiles step on this worker';
            if (!fs.existsSync(python)) throw new Error(`CPFLOW_PROFILES_PYTHON=${python} does not exist`);
            return python;
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
