export { createBuiltinEngine, BUILTIN_ENGINE_NAME, BUILTIN_ENGINE_VERSION, type BuiltinEngineOptions } from './engine';
export { decodeGrayscale, type GrayscaleImage } from './decode';
export { otsuThreshold, minimumCrossEntropyThreshold } from './threshold';
export { segmentNuclei, DEFAULT_SEGMENTATION_OPTIONS, type Segmentation, type SegmentationOptions, type ThresholdMethod } from './segment';
export { measureObjects, type MeasurementRow, type ChannelIntensity } from './measure';
export { builtinOptionsFromPipeline, type PipelineDerivedOptions } from './pipeline-options';
export { gaussianBlur, labelComponents, fillLabelledHoles, findSeeds, seededWatershed } from './imageops';
export { setBuiltinThreads, closeBuiltinThreadPool } from './thread-pool';
