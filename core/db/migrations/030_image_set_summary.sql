-- issue 10: each done image set's contribution to the experiment summary (core/model/domain.ts
-- SetSummary), written with its outcome, so the reduce reads MariaDB instead of every set's tables.
ALTER TABLE image_set ADD COLUMN summary JSON NULL;
