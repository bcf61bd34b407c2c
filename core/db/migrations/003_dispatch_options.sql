-- Dispatch settings (batch size, window, engine time-out, …) are not engine options: they move from
-- engine_options into a column of their own. Defaults live in core/model/defaults.ts only, so the
-- column default of max_failed_fraction goes, and the never-implemented 'command' engine leaves the enum.
ALTER TABLE experiment ADD COLUMN dispatch_options JSON NULL AFTER engine_options;
UPDATE experiment
   SET dispatch_options = JSON_OBJECT('batchSize', CAST(JSON_VALUE(engine_options, '$.batchSize') AS SIGNED)),
       engine_options = JSON_REMOVE(engine_options, '$.batchSize')
 WHERE engine_options IS NOT NULL AND JSON_VALUE(engine_options, '$.batchSize') IS NOT NULL;
ALTER TABLE experiment ALTER COLUMN max_failed_fraction DROP DEFAULT;
ALTER TABLE experiment MODIFY engine ENUM('cellprofiler','builtin') NOT NULL;
