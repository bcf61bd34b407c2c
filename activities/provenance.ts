import { z } from 'zod';
import { setSummarySchema } from '../core/model';

/** provenance.json: the done marker of an image set and the record of what produced its tables. */
export const provenanceSchema = z.object({
  kind: z.literal('cpflow.image-set-provenance/v1'),
  experimentId: z.number().int(),
  imageSet: z.object({ id: z.number().int(), key: z.string(), metadata: z.record(z.string(), z.string()) }),
  engine: z.object({ name: z.string(), version: z.string() }),
  pipelineSha256: z.string().nullable(),
  inputs: z.array(
    z.object({ channel: z.string(), uri: z.string(), size: z.number(), checksum: z.string(), sha256: z.string() }),
  ),
  outputs: z.array(z.object({ name: z.string(), uri: z.string(), size: z.number(), checksum: z.string() })),
  cpflow: z.object({ version: z.string(), gitCommit: z.string() }),
  worker: z.object({ host: z.string(), pid: z.number(), attempt: z.number() }),
  startedAt: z.string(),
  finishedAt: z.string(),
  /** The set's contribution to the experiment summary (absent in provenance written before issue 10). */
  summary: setSummarySchema.optional(),
});
export type SetProvenance = z.infer<typeof provenanceSchema>;
