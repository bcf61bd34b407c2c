-- cpflow schema v1: the lab's record of projects, experiments, image sets and results.
-- Natural keys are unique so every write can be an idempotent upsert.

CREATE TABLE project (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name        VARCHAR(128)    NOT NULL,
  bucket      VARCHAR(63)     NOT NULL,
  created_at  DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  UNIQUE KEY uq_project_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE experiment (
  id                  BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  project_id          BIGINT UNSIGNED NOT NULL,
  name                VARCHAR(200)    NOT NULL,
  pipeline_uri        VARCHAR(1024)   NULL,
  pipeline_sha256     CHAR(64)        NULL,
  engine              ENUM('cellprofiler','builtin','command') NOT NULL,
  engine_options      JSON            NULL,
  input_prefix        VARCHAR(1024)   NOT NULL,
  grouping_rule       JSON            NOT NULL,
  status              ENUM('submitted','running','reducing','done','done_with_failures','failed','cancelled')
                      NOT NULL DEFAULT 'submitted',
  sealed              TINYINT(1)      NOT NULL DEFAULT 1,
  max_failed_fraction DOUBLE          NOT NULL DEFAULT 0.5,
  workflow_id         VARCHAR(200)    NULL,
  total_sets          INT UNSIGNED    NOT NULL DEFAULT 0,
  done_sets           INT UNSIGNED    NOT NULL DEFAULT 0,
  failed_sets         INT UNSIGNED    NOT NULL DEFAULT 0,
  summary_uri         VARCHAR(1024)   NULL,
  report_uri          VARCHAR(1024)   NULL,
  error               TEXT            NULL,
  created_at          DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  updated_at          DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  started_at          DATETIME(3)     NULL,
  finished_at         DATETIME(3)     NULL,
  UNIQUE KEY uq_experiment_name (project_id, name),
  KEY ix_experiment_status (status, id),
  CONSTRAINT fk_experiment_project FOREIGN KEY (project_id) REFERENCES project (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE image_set (
  id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  experiment_id  BIGINT UNSIGNED NOT NULL,
  set_key        VARCHAR(200)    NOT NULL,
  metadata       JSON            NOT NULL,
  status         ENUM('pending','running','done','failed','cancelled') NOT NULL DEFAULT 'pending',
  attempts       INT UNSIGNED    NOT NULL DEFAULT 0,
  skipped        TINYINT(1)      NOT NULL DEFAULT 0,
  output_prefix  VARCHAR(1024)   NULL,
  error          TEXT            NULL,
  created_at     DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  updated_at     DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  started_at     DATETIME(3)     NULL,
  finished_at    DATETIME(3)     NULL,
  UNIQUE KEY uq_image_set_key (experiment_id, set_key),
  KEY ix_image_set_status (experiment_id, status, id),
  CONSTRAINT fk_image_set_experiment FOREIGN KEY (experiment_id) REFERENCES experiment (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE image_file (
  id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  image_set_id  BIGINT UNSIGNED NOT NULL,
  channel       VARCHAR(100)    NOT NULL,
  uri           VARCHAR(1024)   NOT NULL,
  size          BIGINT UNSIGNED NOT NULL,
  checksum      VARCHAR(100)    NOT NULL,
  UNIQUE KEY uq_image_file_channel (image_set_id, channel),
  CONSTRAINT fk_image_file_set FOREIGN KEY (image_set_id) REFERENCES image_set (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE result_file (
  id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  experiment_id  BIGINT UNSIGNED NOT NULL,
  image_set_id   BIGINT UNSIGNED NULL,
  kind           VARCHAR(50)     NOT NULL,
  uri            VARCHAR(700)    NOT NULL,
  size           BIGINT UNSIGNED NOT NULL,
  checksum       VARCHAR(100)    NOT NULL,
  created_at     DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  UNIQUE KEY uq_result_file_uri (experiment_id, uri),
  KEY ix_result_file_set (image_set_id),
  CONSTRAINT fk_result_file_experiment FOREIGN KEY (experiment_id) REFERENCES experiment (id) ON DELETE CASCADE,
  CONSTRAINT fk_result_file_set FOREIGN KEY (image_set_id) REFERENCES image_set (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
