import type { Command } from 'commander';
import { dbConfig, migrationConfig } from '../../core/config';
import { migrateDatabase } from '../../core/db';

/**
 * `cpflow migrate`: bring cpflow's MariaDB schema up to this version, as the migration account
 * (CPFLOW_DB_MIGRATE_USER / CPFLOW_DB_MIGRATE_PASSWORD; without them, the runtime account, which then
 * needs DDL rights). Runtime processes never migrate: they refuse to work on an older schema and name
 * this command. Safe to run by several processes at once (a named lock) and again (no-op).
 */
export function registerMigrate(program: Command): void {
  program
    .command('migrate')
    .description('apply pending schema migrations (run with the migration account)')
    .action(async () => {
      const config = dbConfig();
      const migration = migrationConfig();
      const { applied, version } = await migrateDatabase(config, migration);
      const who = migration.CPFLOW_DB_MIGRATE_USER ?? config.CPFLOW_DB_USER;
      console.log(
        applied.length > 0
          ? `migrated ${config.CPFLOW_DB_NAME} at ${config.CPFLOW_DB_HOST}:${config.CPFLOW_DB_PORT} as ${who}: applied ${applied.join(', ')}; schema version ${version}`
          : `${config.CPFLOW_DB_NAME} at ${config.CPFLOW_DB_HOST}:${config.CPFLOW_DB_PORT} is up to date (schema version ${version})`,
      );
    });
}
