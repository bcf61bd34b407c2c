-- issue 10 (adaptive batching): the engine seconds each analysed set cost (its invocation's wall time
-- shared by its sets) and the number of sets in the analysis activity that ran it, written with the
-- outcome; `cpflow status` shows the batch sizes adaptive batching chose and the cost it measured.
ALTER TABLE image_set ADD COLUMN engine_seconds DOUBLE NULL, ADD COLUMN batch_size SMALLINT UNSIGNED NULL;
