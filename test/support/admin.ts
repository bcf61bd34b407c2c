import { dbConfig, type DbConfig } from '../../core/config';
import { stackAdminEnv } from '../../deploy/local/services';

/**
 * The local stack's administrative accounts, for tests that need more than cpflow's processes hold:
 * making throw-away databases (the migration account) or proving what the runtime accounts may not do.
 */
export async function migrationDbConfig(database?: string): Promise<DbConfig> {
  const admin = await stackAdminEnv();
  const base = dbConfig();
  return {
    ...base,
    CPFLOW_DB_USER: admin.CPFLOW_DB_MIGRATE_USER ?? base.CPFLOW_DB_USER,
    CPFLOW_DB_PASSWORD: admin.CPFLOW_DB_MIGRATE_PASSWORD ?? base.CPFLOW_DB_PASSWORD,
    ...(database ? { CPFLOW_DB_NAME: database } : {}),
  };
}
