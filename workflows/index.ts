export { ExperimentWorkflow, type ExperimentWorkflowInput } from './experiment';
export { ImageSetChunkWorkflow, type ChunkWorkflowInput } from './chunk';
export * from './progress';
