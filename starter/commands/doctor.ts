import fs from 'node:fs';
import type { Command } from 'commander';
import { configuredCellProfiler, configuredPlugins, pluginFiles } from '../../core/cellprofiler';
import { dbConfig, temporalConfig, validateSettings, workerConfig } from '../../core/config';
import { db, schemaVersion } from '../../core/db';
import { describeError } from '../../core/errors';
import { ensureBucket, s3Endpoint } from '../../core/s3';
import { withClient } from '../../core/temporal';
import { cellProfilerDoctorCheck } from './doctor-cellprofiler';
import { describeTemporal } from '../../core/temporal-settings';

/** `cpflow doctor`: configuration and every service, one line each. */
export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description('check configuration and connectivity')
    .option('--recheck', 'run the CellProfiler module-coverage pipeline even if this environment passed before', false)
    .option('--json', 'machine-readable output', false)
    .action(async (o: { recheck: boolean; json: boolean }) => {
      const checks: Array<[string, () => Promise<string>]> = [
        [
          'configuration',
          async () => {
            validateSettings();
            return 'valid';
          },
        ],
        [
          'MariaDB',
          async () => {
            const cfg = dbConfig();
            const version = await schemaVersion(await db());
            return `${cfg.CPFLOW_DB_HOST}:${cfg.CPFLOW_DB_PORT}/${cfg.CPFLOW_DB_NAME} as ${cfg.CPFLOW_DB_USER} (schema version ${version})`;
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
            return describeTemporal(temporalConfig().settings);
          },
        ],
        [
          'CellProfiler',
          async () => {
            const exe = workerConfig().CPFLOW_CELLPROFILER;
            if (!exe) return 'not configured (CPFLOW_CELLPROFILER unset): the builtin engine is used';
            if (!configuredCellProfiler()) throw new Error(`CPFLOW_CELLPROFILER=${exe} does not exist`);
            return `${await cellProfilerDoctorCheck(exe, { fresh: o.recheck })}; this worker polls the cellprofiler queue`;
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
      const results: Array<{ check: string; ok: boolean; detail: string }> = [];
      for (const [name, check] of checks) {
        try {
          results.push({ check: name, ok: true, detail: await check() });
        } catch (err) {
          results.push({ check: name, ok: false, detail: describeError(err, s3Endpoint) });
        }
        const last = results[results.length - 1]!;
        if (!o.json) console.log(`${last.ok ? 'ok  ' : 'FAIL'}  ${name.padEnd(13)} ${last.detail}`);
      }
      if (o.json) console.log(JSON.stringify({ ok: results.every((r) => r.ok), checks: results }, null, 2));
      if (results.some((r) => !r.ok)) process.exitCode = 1;
    });
}
