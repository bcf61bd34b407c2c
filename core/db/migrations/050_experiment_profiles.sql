-- Experiments submitted with a platemap: what their profiles step does (platemap location and
-- sha256, control wells, normalisation, feature selection), as JSON validated by
-- core/model/profiles.ts. One row per experiment; no row means no profiles step.
CREATE TABLE experiment_profiles (
  experiment_id  BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  options        JSON            NOT NULL,
  created_at     DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  CONSTRAINT fk_experiment_profiles_experiment FOREIGN KEY (experiment_id) REFERENCES experiment (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
