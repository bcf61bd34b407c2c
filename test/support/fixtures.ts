import path from 'node:path';

/** Test data kept in this repository (see each folder's README and LICENSE). */
export const FIXTURES = path.resolve(__dirname, '..', 'fixtures');
/** CellProfiler's ExampleHuman: pipeline, one image set of 3 channels, CellProfiler 4.0.6 reference output. */
export const EXAMPLE_HUMAN = path.join(FIXTURES, 'examplehuman');
