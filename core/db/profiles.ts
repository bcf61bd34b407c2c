import { z } from 'zod';
import { profilesOptionsSchema, type ProfilesOptions } from '../model/profiles';
import type { Conn, Db } from './pool';

/** experiment_profiles: the profiles settings of experiments submitted with a platemap (migration 050). */

const optionsRowSchema = z.object({
  options: z.preprocess((v) => (typeof v === 'string' ? JSON.parse(v) : v), profilesOptionsSchema),
});

/** Inside registerExperiment's transaction, so an experiment never exists without the platemap it was submitted with. */
export async function insertProfilesOptionsOn(conn: Conn, experimentId: number, options: ProfilesOptions): Promise<void> {
  await conn.query('INSERT INTO experiment_profiles (experiment_id, options) VALUES (?, ?)', [
    experimentId,
    JSON.stringify(profilesOptionsSchema.parse(options)),
  ]);
}

/** The experiment's profiles settings, or undefined when it has no platemap. */
export async function getProfilesOptions(pool: Db, experimentId: number): Promise<ProfilesOptions | undefined> {
  const rows = await pool.query<unknown[]>('SELECT options FROM experiment_profiles WHERE experiment_id = ?', [experimentId]);
  return rows[0] === undefined ? undefined : optionsRowSchema.parse(rows[0]).options;
}
