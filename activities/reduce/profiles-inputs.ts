import { z } from 'zod';
import type { ProfilesStepResult } from '../../core/model';
import { getBytes, parseS3Uri } from '../../core/s3';
import { profilesReportDataSchema, type ProfilesSection } from './profiles-section';

/**
 * What reduce needs of the profiles step (given as S3 URIs in its input): the report section's data
 * and the provenance lines for the experiment's provenance.json (tool versions, platemap sha256).
 */

const profilesProvenanceSchema = z.object({
  platemap: z.object({ uri: z.string(), sha256: z.string(), fileName: z.string() }),
  tools: z.record(z.string(), z.string()),
  settings: z.record(z.string(), z.unknown()),
  warnings: z.array(z.string()),
});

export interface ProfilesForReport {
  section: ProfilesSection;
  provenance: Record<string, unknown>;
}

async function readJson(uri: string): Promise<unknown> {
  const { bucket, key } = parseS3Uri(uri);
  return JSON.parse((await getBytes(bucket, key)).toString('utf8'));
}

export async function loadProfilesForReport(result: ProfilesStepResult): Promise<ProfilesForReport> {
  if (!result.ok) return { section: { error: result.error }, provenance: { error: result.error } };
  const { output } = result;
  const [data, provenance] = await Promise.all([
    readJson(output.reportDataUri).then((v) => profilesReportDataSchema.parse(v)),
    readJson(output.provenanceUri).then((v) => profilesProvenanceSchema.parse(v)),
  ]);
  return {
    section: { data, files: [output.singleCellsUri, ...output.profileUris], cells: output.cells, features: output.features },
    provenance: {
      platemap: provenance.platemap,
      cytotable: provenance.tools.cytotable ?? 'unknown',
      pycytominer: provenance.tools.pycytominer ?? 'unknown',
      settings: provenance.settings,
      singleCells: output.singleCellsUri,
      profiles: output.profileUris.filter((u) => u.endsWith('.parquet')),
      provenance: output.provenanceUri,
      warnings: provenance.warnings,
    },
  };
}
