/**
 * Profiles: what an experiment with a platemap asks of its profiles step (stored with the
 * experiment), and what that step hands on to the reduce step. Node-free, like the rest of the model.
 *
 * The step (activities/profiles/) runs the field's standard tools in the order of the Cell Painting
 * profiling recipe: CytoTable (per-set tables → single-cell Parquet), then pycytominer: aggregate per
 * well, annotate with the platemap, normalise per plate, select features.
 */
import { z } from 'zod';
import * as DEFAULTS from './defaults';

/** pycytominer.normalize methods cpflow accepts. */
export const NORMALIZATION_METHODS = ['standardize', 'robustize', 'mad_robustize', 'spherize'] as const;
export type NormalizationMethod = (typeof NORMALIZATION_METHODS)[number];

/** pycytominer.feature_select operations cpflow accepts. */
export const FEATURE_SELECTION_OPERATIONS = ['variance_threshold', 'correlation_threshold', 'drop_na_columns', 'blocklist', 'drop_outliers'] as const;
export type FeatureSelectionOperation = (typeof FEATURE_SELECTION_OPERATIONS)[number];

export const AGGREGATION_OPERATIONS = ['median', 'mean'] as const;

/**
 * A platemap column name usable in pycytominer's sample query (`Metadata_<column> == "<value>"`):
 * letters, digits and `_`, not starting with a digit.
 */
export const PLATEMAP_COLUMN = /^[A-Za-z_][A-Za-z0-9_]*$/;

export const controlsSchema = z.object({
  /** Platemap column (without pycytominer's `Metadata_` prefix), e.g. `control_type`. */
  column: z.string().regex(PLATEMAP_COLUMN),
  /** Value that marks a negative-control well, e.g. `negcon`. No quotes or backslashes (it goes into a query). */
  value: z.string().min(1).regex(/^[^'"\\]*$/),
});
export type Controls = z.infer<typeof controlsSchema>;

export const profilesOptionsSchema = z.object({
  platemap: z.object({
    /** The platemap as submitted, stored in the project's bucket under `platemaps/<sha256>.csv`. */
    uri: z.string().min(1),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    /** File name the scientist gave, for provenance and the report. */
    fileName: z.string(),
  }),
  /** Negative-control wells to normalise against; null: normalise against all wells of each plate. */
  controls: controlsSchema.nullable(),
  normalization: z.enum(NORMALIZATION_METHODS).default(DEFAULTS.PROFILES_NORMALIZATION),
  featureSelection: z.array(z.enum(FEATURE_SELECTION_OPERATIONS)).default([...DEFAULTS.PROFILES_FEATURE_SELECTION]),
  aggregation: z.enum(AGGREGATION_OPERATIONS).default(DEFAULTS.PROFILES_AGGREGATION),
  /** Feature shown in the report's per-well heatmap; default: the first of DEFAULTS.PROFILES_REPORT_FEATURES present. */
  reportFeature: z.string().min(1).optional(),
});
export type ProfilesOptions = z.infer<typeof profilesOptionsSchema>;

export interface ProfilesInput {
  experimentId: number;
  workflowId: string;
}

/** S3 URIs of what the profiles step wrote under `results/` (payloads carry keys, never contents). */
export interface ProfilesOutput {
  singleCellsUri: string;
  /** `results/profiles/*` files: well profiles, normalised, feature-selected (Parquet and CSV). */
  profileUris: string[];
  /** Small JSON the report draws its profiles section from (one row per well). */
  reportDataUri: string;
  provenanceUri: string;
  cells: number;
  wells: number;
  features: { aggregated: number; selected: number };
}

/** What reduce is told about the profiles step: its output, or why there is none. */
export type ProfilesStepResult = { ok: true; output: ProfilesOutput } | { ok: false; error: string };
