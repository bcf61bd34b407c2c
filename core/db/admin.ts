import type { Connection } from 'mariadb';

/**
 * Administration statements, run by the local stack as MariaDB's root over its socket: creating
 * cpflow's database and its two accounts, and the stack's smoke check. The same grants for a
 * production server are in deploy/k8s/README.md ("Database and storage accounts").
 *
 * Two accounts, least privilege:
 * - the migration account owns the schema (DDL: CREATE, ALTER, DROP, INDEX, REFERENCES) and is used
 *   only by `cpflow migrate` (the local stack runs it on every `up`);
 * - the runtime account, used by the CLI, the watcher and every worker, may only read and write
 *   rows (SELECT, INSERT, UPDATE, DELETE): a compromised or buggy worker cannot drop or alter a table.
 */

/** Privileges of the runtime account on cpflow's database: rows only. */
export const RUNTIME_PRIVILEGES = ['SELECT', 'INSERT', 'UPDATE', 'DELETE'] as const;
/** Privileges of the migration account on cpflow's database: rows and schema, nothing server-wide. */
export const MIGRATION_PRIVILEGES = ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'CREATE', 'ALTER', 'DROP', 'INDEX', 'REFERENCES'] as const;

export interface Credentials {
  user: string;
  password: string;
}

export interface AccountsSpec {
  database: string;
  runtime: Credentials;
  migration: Credentials;
  /** Hosts the accounts may connect from, e.g. `127.0.0.1` and `localhost`. */
  hosts: string[];
  /**
   * Local stack only: also grant the same privileges on `<database>_*` databases, the throw-away
   * databases tests and the benchmark use (created by the migration account, used by the runtime one).
   */
  scratchDatabases?: boolean;
}

/**
 * Create the database and both accounts, and make their grants exactly the ones above (idempotent:
 * also resets passwords, and revokes whatever else an account held, e.g. the ALL PRIVILEGES an older
 * stack gave its single account).
 */
export async function provisionDatabase(root: Connection, spec: AccountsSpec): Promise<void> {
  await root.query(`CREATE DATABASE IF NOT EXISTS \`${spec.database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`);
  const targets = [`\`${spec.database}\`.*`, ...(spec.scratchDatabases ? [`\`${spec.database}\\_%\`.*`] : [])];
  const accounts: Array<[Credentials, readonly string[]]> = [
    [spec.migration, MIGRATION_PRIVILEGES],
    [spec.runtime, RUNTIME_PRIVILEGES],
  ];
  for (const [credentials, privileges] of accounts) {
    const password = root.escape(credentials.password);
    for (const host of spec.hosts) {
      const account = `${root.escape(credentials.user)}@${root.escape(host)}`;
      await root.query(`CREATE USER IF NOT EXISTS ${account} IDENTIFIED BY ${password}`);
      await root.query(`ALTER USER ${account} IDENTIFIED BY ${password}`);
      await root.query(`REVOKE ALL PRIVILEGES, GRANT OPTION FROM ${account}`);
      for (const target of targets) await root.query(`GRANT ${privileges.join(', ')} ON ${target} TO ${account}`);
    }
  }
}

/**
 * Secure stack: every account other than the administrators must connect with TLS and a client
 * certificate signed by the stack's CA (REQUIRE X509); a plain stack requires nothing. Applied to all
 * such accounts, whatever they are called, so accounts added later are covered too.
 */
export async function requireTlsForAccounts(root: Connection, secure: boolean, administrators: string[]): Promise<void> {
  const admins = ['root', 'mariadb.sys', 'mysql', 'PUBLIC', '', ...administrators];
  const accounts = await root.query<Array<{ User: string; Host: string }>>(
    `SELECT User, Host FROM mysql.user WHERE User NOT IN (${admins.map(() => '?').join(', ')})`,
    admins,
  );
  for (const { User, Host } of accounts) {
    await root.query(`ALTER USER ${root.escape(User)}@${root.escape(Host)} REQUIRE ${secure ? 'X509' : 'NONE'}`);
  }
}

/** A throw-away database of the local stack (`<cpflow database>_<name>`), made by the migration account. */
export async function createDatabaseIfMissing(conn: Connection, database: string): Promise<void> {
  await conn.query(`CREATE DATABASE IF NOT EXISTS \`${database.replace(/`/g, '')}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`);
}

/**
 * The stack's smoke check: as the migration account, write (or expect) a marker row in a database of
 * its own (`<database>_stack_smoke`, so the application schema stays untouched); returns the markers
 * found and the server's character set.
 */
export async function smokeCheckDatabase(
  conn: Connection,
  database: string,
  marker: { write?: string; expect?: string },
): Promise<{ markers: string[]; charset: string }> {
  await conn.query(`CREATE DATABASE IF NOT EXISTS \`${database}_stack_smoke\``);
  await conn.query(`USE \`${database}_stack_smoke\``);
  await conn.query('CREATE TABLE IF NOT EXISTS stack_smoke (marker VARCHAR(64) PRIMARY KEY, written_at DATETIME NOT NULL)');
  if (marker.write !== undefined) await conn.query('INSERT IGNORE INTO stack_smoke VALUES (?, NOW())', [marker.write]);
  const rows: Array<{ marker: string }> = await conn.query('SELECT marker FROM stack_smoke');
  const markers = rows.map((row) => row.marker);
  if (marker.expect !== undefined && !markers.includes(marker.expect)) {
    throw new Error(`marker ${marker.expect} missing from MariaDB (found ${markers.join(', ') || 'none'})`);
  }
  const [first]: Array<{ charset: string }> = await conn.query('SELECT @@character_set_server AS charset');
  return { markers, charset: first?.charset ?? 'unknown' };
}
