/** Every activity cpflow registers. Workflows import this module's types only. */
export { loadExperimentPlan, prepareManifestChunks, loadChunkIndex } from './manifest';
export { analyzeImageSets } from './analyze';
export { syncImageSets, syncExperimentStatus } from './sync';
export { reduceExperiment } from './reduce-experiment';
