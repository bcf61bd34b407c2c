import { z } from 'zod';
import {
  dispatchOptionsSchema,
  ENGINE_NAMES,
  engineOptionsSchema,
  EXPERIMENT_STATUSES,
  groupingRuleSchema,
  IMAGE_SET_STATUSES,
} from '../model/domain';
import { stageSpecSchema } from '../model/stages';

/** Row types of cpflow's tables, checked with zod as rows cross from MariaDB into the program. */

const jsonColumn = <T extends z.ZodTypeAny>(schema: T) => z.preprocess((v) => (typeof v === 'string' ? JSON.parse(v) : v), schema);

const dateOrNull = z.union([z.date(), z.null()]);

export const projectRowSchema = z.object({ id: z.number().int(), bucket: z.string() });
export type ProjectRow = z.infer<typeof projectRowSchema>;

export const experimentRowSchema = z.object({
  id: z.number().int(),
  project_id: z.number().int(),
  project_name: z.string(),
  bucket: z.string(),
  name: z.string(),
  pipeline_uri: z.string().nullable(),
  pipeline_sha256: z.string().nullable(),
  engine: z.enum(ENGINE_NAMES),
  engine_options: jsonColumn(engineOptionsSchema.nullable()).transform((v) => v ?? {}),
  // Rows written before migration 003 have no dispatch options: they get the defaults.
  dispatch_options: jsonColumn(dispatchOptionsSchema.partial().nullable()).transform((v) => dispatchOptionsSchema.parse(v ?? {})),
  // Rows written before migration 010, and plain experiments, have no stages: one implicit stage.
  stages: jsonColumn(z.array(stageSpecSchema).nullable()).optional().transform((v) => v ?? null),
  warnings: jsonColumn(z.array(z.string()).nullable()).optional().transform((v) => v ?? []),
  input_prefix: z.string(),
  grouping_rule: jsonColumn(groupingRuleSchema),
  status: z.enum(EXPERIMENT_STATUSES),
  sealed: z.coerce.boolean(),
  max_failed_fraction: z.number(),
  workflow_id: z.string().nullable(),
  total_sets: z.number().int(),
  done_sets: z.number().int(),
  failed_sets: z.number().int(),
  summary_uri: z.string().nullable(),
  report_uri: z.string().nullable(),
  error: z.string().nullable(),
  created_at: z.date(),
  updated_at: z.date(),
  started_at: dateOrNull,
  claimed_at: dateOrNull.optional(),
  finished_at: dateOrNull,
});
export type ExperimentRow = z.infer<typeof experimentRowSchema>;

export const activeExperimentRowSchema = z.object({
  id: z.number().int(),
  workflow_id: z.string().nullable(),
  sealed: z.coerce.boolean(),
  claimed_at: dateOrNull,
});
export type ActiveExperimentRow = z.infer<typeof activeExperimentRowSchema>;

export const imageSetRowSchema = z.object({
  id: z.number().int(),
  experiment_id: z.number().int(),
  stage: z.string().default(''),
  set_key: z.string(),
  group_key: z.string().default(''),
  partition_key: z.string().default(''),
  metadata: jsonColumn(z.record(z.string(), z.string())),
  status: z.enum(IMAGE_SET_STATUSES),
  attempts: z.number().int(),
  skipped: z.coerce.boolean(),
  output_prefix: z.string().nullable(),
  error: z.string().nullable(),
  warnings: jsonColumn(z.array(z.string()).nullable()).optional().transform((v) => v ?? []),
});
export type ImageSetRow = z.infer<typeof imageSetRowSchema>;

export const imageFileRowSchema = z.object({
  image_set_id: z.number().int(),
  channel: z.string(),
  uri: z.string(),
  size: z.number().int(),
  checksum: z.string(),
});
export type ImageFileRow = z.infer<typeof imageFileRowSchema>;

export const resultFileRowSchema = z.object({
  image_set_id: z.number().int().nullable(),
  kind: z.string(),
  uri: z.string(),
  size: z.number().int(),
});
export type ResultFileRow = z.infer<typeof resultFileRowSchema>;

/** A `COUNT(*) AS n` row. */
export const countRowSchema = z.object({ n: z.coerce.number().int() });
export const statusCountRowSchema = countRowSchema.extend({ status: z.enum(IMAGE_SET_STATUSES) });
export const stageStatusCountRowSchema = statusCountRowSchema.extend({ stage: z.string() });
export const groupStatusCountRowSchema = statusCountRowSchema.extend({ group_key: z.string() });
export const idRowSchema = z.object({ id: z.number().int() });
export const affectedSchema = z.object({ affectedRows: z.number().int() });
export const insertSchema = z.object({ insertId: z.coerce.number().int() });
