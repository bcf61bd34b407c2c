import { ActivityFailure, ApplicationFailure } from '@temporalio/workflow';
import type { ProfilesStepResult } from '../core/model';
import { profiles } from './activities-proxy';

/**
 * The profiles step of an experiment with a platemap. Its failure does not stop the reduce: the
 * summary and report are still made (the report says why there are no profiles) and the workflow
 * records the experiment as failed with the reason.
 */
export async function profilesStep(experimentId: number, workflowId: string): Promise<ProfilesStepResult> {
  try {
    return { ok: true, output: await profiles.computeProfiles({ experimentId, workflowId }) };
  } catch (err) {
    if (!(err instanceof ActivityFailure)) throw err; // cancellation and the like pass through
    const cause = err.cause;
    return { ok: false, error: cause instanceof ApplicationFailure || cause instanceof Error ? cause.message : err.message };
  }
}

/** The experiment's error line when its profiles step failed, else null. */
export function profilesError(result: ProfilesStepResult | undefined): string | null {
  return result?.ok === false ? `profiles: ${result.error}` : null;
}
