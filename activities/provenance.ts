import { z } from 'zod';
import { setSummarySchema } from '../core/model';

/** The engine that produced a result: name, exact version, and the plugin files it loaded. */
export const engineIdentitySchema = z.object({
  name: z.string(),
  version: z.string(),
  /** CellProfiler plugins (CPFLOW_CELLPROFILER_PLUGINS): each file with its sha256. */
  plugins: z.array(z.object({ file: z.string(), sha256: z.string() })).optional(),
  // CellProfiler's environment (build, Python, sha256 of `pip freeze --all`); absent for other
  // engines and in provenance written before it was recorded.
  environment: z.object({ build: z.string(), python: z.string(), packagesSha256: z.string() }).optional(),
});

const inputSchema = z.object({ channel: z.string(), uri: z.string(), size: z.number(), checksum: z.string(), sha256: z.string() });
const outputSchema = z.object({ name: z.string(), uri: z.string(), size: z.number(), checksum: z.string() });

/** provenance.json: the done marker of an image set and the record of what produced its tables. */
export const provenanceSchema = z.object({
  kind: z.literal('cpflow.image-set-provenance/v1'),
  experimentId: z.number().int(),
  /** The stage ('' or absent for a plain experiment). */
  stage: z.string().optional(),
  imageSet: z.object({ id: z.number().int(), key: z.string(), metadata: z.record(z.string(), z.string()) }),
  /** Set when the image set ran as part of a group: the group's key and its provenance.json. */
  group: z.object({ key: z.string(), provenanceUri: z.string() }).optional(),
  engine: engineIdentitySchema,
  pipelineSha256: z.string().nullable(),
  inputs: z.array(inputSchema),
  outputs: z.array(outputSchema),
  /** CellProfiler's warnings while it analysed this set. */
  warnings: z.array(z.string()).optional(),
  cpflow: z.object({ version: z.string(), gitCommit: z.string() }),
  worker: z.object({ host: z.string(), pid: z.number(), attempt: z.number() }),
  startedAt: z.string(),
  finishedAt: z.string(),
  /** The set's contribution to the experiment summary (absent in provenance written before issue 10). */
  summary: setSummarySchema.optional(),
});
export type SetProvenance = z.infer<typeof provenanceSchema>;

/**
 * The group's provenance.json (`…/groups/<key>/provenance.json`), written LAST, after every set's
 * own provenance: its presence means the whole group is done. A group is skipped on a later run only
 * when this record matches every input of every set, the pipeline and the engine (plugins included);
 * otherwise the whole group runs again.
 */
export const groupProvenanceSchema = z.object({
  kind: z.literal('cpflow.group-provenance/v1'),
  experimentId: z.number().int(),
  stage: z.string(),
  group: z.object({ key: z.string(), metadata: z.record(z.string(), z.string()) }),
  engine: engineIdentitySchema,
  pipelineSha256: z.string().nullable(),
  sets: z.array(
    z.object({
      id: z.number().int(),
      key: z.string(),
      inputs: z.array(inputSchema),
      outputs: z.array(outputSchema),
      /** The set's own provenance.json, as stored. */
      provenance: z.object({ uri: z.string(), size: z.number(), checksum: z.string() }),
      warnings: z.array(z.string()).optional(),
    }),
  ),
  /** Files that belong to the group rather than one set (an illumination function saved once). */
  outputs: z.array(outputSchema),
  cpflow: z.object({ version: z.string(), gitCommit: z.string() }),
  worker: z.object({ host: z.string(), pid: z.number(), attempt: z.number() }),
  startedAt: z.string(),
  finishedAt: z.string(),
});
export type GroupProvenance = z.infer<typeof groupProvenanceSchema>;
