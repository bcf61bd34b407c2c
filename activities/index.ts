import type { CpflowActivities } from '../core/model';
import { createAnalysisActivities } from './analyze';
import { failPartition, loadChunkIndex, loadExperimentPlan, prepareManifestChunks } from './manifest';
import { computeProfiles } from './profiles';
import { reduceExperiment } from './reduce-experiment';
import { syncExperimentStatus, syncImageSets } from './sync';

/** Every activity cpflow registers, grouped by the pool that runs it; the contract is core/model/activities.ts. */

export const controlActivities = { loadExperimentPlan, prepareManifestChunks, loadChunkIndex, failPartition, syncImageSets, syncExperimentStatus };
export const analysisActivities = createAnalysisActivities();
export const reduceActivities = { reduceExperiment, computeProfiles };

export const activities = { ...controlActivities, ...analysisActivities, ...reduceActivities } satisfies CpflowActivities;
