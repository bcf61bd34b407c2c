-- When a watcher last claimed the experiment (first start or a retry). The watcher compares it with a
-- closed workflow run's close time to tell a previous run from the current one.
ALTER TABLE experiment ADD COLUMN claimed_at DATETIME(3) NULL AFTER started_at;
