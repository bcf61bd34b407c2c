-- Stages and groups (issue 13). An experiment may have several stages (experiment.stages, NULL for a
-- plain one-pipeline experiment); every stage has its own image_set rows (same keys, its own status).
-- group_key: the set's group in a stage run with --group-by / groupBy ('' otherwise); partition_key:
-- the upstream group whose files the set needs ('' when the stage takes no files from another).
ALTER TABLE experiment ADD COLUMN stages JSON NULL AFTER dispatch_options;
ALTER TABLE experiment ADD COLUMN warnings JSON NULL AFTER error;
ALTER TABLE image_set ADD COLUMN stage VARCHAR(48) NOT NULL DEFAULT '' AFTER experiment_id;
ALTER TABLE image_set ADD COLUMN group_key VARCHAR(200) NOT NULL DEFAULT '' AFTER set_key;
ALTER TABLE image_set ADD COLUMN partition_key VARCHAR(200) NOT NULL DEFAULT '' AFTER group_key;
ALTER TABLE image_set ADD COLUMN warnings TEXT NULL AFTER error;
ALTER TABLE image_set DROP INDEX uq_image_set_key, ADD UNIQUE KEY uq_image_set_key (experiment_id, stage, set_key);
ALTER TABLE image_set ADD KEY ix_image_set_partition (experiment_id, stage, partition_key, status, group_key, id);
