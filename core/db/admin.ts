import type { Connection } from 'mariadb';

/**
 * Administration statements, run by the local stack as MariaDB's root over its socket: creating
 * cpflow's database and account, and the stack's smoke check. Production grants are documented
 * in deploy/k8s/README.md.
 */

export interface AccountSpec {
  database: string;
  user: string;
  password: string;
  /** Hosts the account may connect from, e.g. `127.0.0.1` and `localhost`. */
  hosts: string[];
}

/** Create the database and the account (idempotent; also resets the password). */
export async function provisionDatabase(root: Connection, spec: AccountSpec): Promise<void> {
  await root.query(`CREATE DATABASE IF NOT EXISTS \`${spec.database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`);
  const password = root.escape(spec.password);
  for (const host of spec.hosts) {
    const account = `${root.escape(spec.user)}@${root.escape(host)}`;
    await root.query(`CREATE USER IF NOT EXISTS ${account} IDENTIFIED BY ${password}`);
    await root.query(`ALTER USER ${account} IDENTIFIED BY ${password}`);
    await root.query(`GRANT ALL PRIVILEGES ON \`${spec.database}\`.* TO ${account}`);
    // Tests create throw-away databases named cpflow_<something>; let the same user own them.
    await root.query(`GRANT ALL PRIVILEGES ON \`${spec.database}\\_%\`.* TO ${account}`);
  }
}

/**
 * The stack's smoke check: as cpflow's account, write (or expect) a marker row in a database of its
 * own (`<database>_stack_smoke`, so the application schema stays untouched); returns the markers
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
