import { z } from 'zod';

/** provenance.json: the done marker of an image set and the record of what produced its tables. */
export const provenanceSchema = z.object({
  kind: z.literal('cpflow.image-set-provenance/v1'),
  experimentId: z.number().int(),
  imageSet: z.object({ id: z.number().int(), key: z.string(), metadata: z.record(z.string(), z.string()) }),
  engine: z.object({
    name: z.string(),
    version: z.string(),
    // CellProfiler's environment (build, Python, sha256 of `pip freeze --all`); absent for other
    // engines and in provenance written before it was recorded.
    environment: z.object({ build: z.string(), python: z.string(), packagesSha256: z.string() }).optional(),
  }),
  pipelineSha256: z.string().nullable(),
  inputs: z.array(
    z.object({ channel: z.string(), uri: z.string(), size: z.number(), checksum: z.string(), sha256: z.string() }),
  ),
  outputs: z.array(z.object({ name: z.string(), uri: z.string(), size: z.number(), checksum: z.string() })),
  cpflow: z.object({ version: z.string(), gitCommit: z.string() }),
  worker: z.object({ host: z.string(), pid: z.number(), attempt: z.number() }),
  startedAt: z.string(),
  finishedAt: z.string(),
});
export type SetProvenance = z.infer<typeof provenanceSchema>;
