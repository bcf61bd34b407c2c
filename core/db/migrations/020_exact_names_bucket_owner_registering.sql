-- Names and keys compare exactly. The database's default collation (utf8mb4_unicode_ci) ignores case
-- and accents, so `bi ünïcode` and `BI unicode` were one project, set keys `A01` and `a01` one image set
-- (the second silently replacing the first's files), and two result URIs differing in case one row.
-- A case-insensitive unique key holds no two values that are equal in binary, so these never fail.
ALTER TABLE project MODIFY name VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE experiment MODIFY name VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE image_set MODIFY set_key VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE image_file MODIFY channel VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE result_file MODIFY uri VARCHAR(700) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;

-- One bucket, one project. owns_bucket is 1 for the project that owns its bucket and NULL otherwise;
-- the unique key over (bucket, owns_bucket) then allows a single owner per bucket (NULLs never clash).
-- Projects that already share a bucket (the bug this fixes) keep working: the oldest owns it, the
-- others are left as they are, and no new project can ever claim a recorded bucket.
ALTER TABLE project ADD COLUMN owns_bucket TINYINT(1) NULL AFTER bucket;
UPDATE project p JOIN (SELECT MIN(id) AS id FROM project GROUP BY bucket) f ON f.id = p.id SET p.owns_bucket = 1;
ALTER TABLE project ADD UNIQUE KEY uq_project_bucket (bucket, owns_bucket);

-- `registering`: `cpflow submit` has reserved the experiment's name and is uploading its inputs; the
-- watcher ignores it until the same submit commits it as `submitted`.
ALTER TABLE experiment MODIFY status ENUM('registering','submitted','running','reducing','done','done_with_failures','failed','cancelled')
  NOT NULL DEFAULT 'submitted';
