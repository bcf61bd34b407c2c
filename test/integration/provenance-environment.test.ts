/**
 * Skip-if-done compares the engine's environment (issue 7): a set whose provenance.json was written
 * by the same CellProfiler build in another environment (another package set or Python) is not
 * "already done". Real MinIO: the marker is read from S3 exactly as the analysis activity reads it.
 */
import { matchingProvenance } from '../../activities/analyze';
import type { EngineIdentity } from '../../activities/engines/types';
import { defaultDispatch } from '../../core/model';
import { ensureBucket, layout, putBytes, s3Store } from '../../core/s3';
import type { ChunkManifest } from '../../activities/manifest';
import type { SetProvenance } from '../../activities/provenance';
import { requireStack, uniqueName } from '../support/harness';

const environment = { build: '5.0.0.dev784', python: '3.9.18', packagesSha256: 'a'.repeat(64) };
const identity: EngineIdentity = { name: 'cellprofiler', version: '5.0.0.dev784', environment };

let bucket: string;
let manifest: ChunkManifest;
const set: ChunkManifest['sets'][number] = {
  id: 7,
  key: 'P1-A01-s1',
  group: '',
  metadata: { Plate: 'P1', Well: 'A01', Site: '1' },
  files: [{ channel: 'DNA', uri: '', size: 3, checksum: 'sha256:abc' }],
};

beforeAll(async () => {
  requireStack();
  // cpflow-*: the only buckets the stack's S3 user may create (least privilege).
  bucket = uniqueName('cpflow-provenv');
  await ensureBucket(bucket);
  set.files[0].uri = `s3://${bucket}/inputs/1/P1_A01_s1_wDNA.tif`;
  manifest = {
    experimentId: 4242,
    bucket,
    engine: 'cellprofiler',
    engineOptions: {},
    dispatch: defaultDispatch(),
    stage: '',
    groupBy: [],
    input: 'files',
    stageInputs: [],
    pipelineUri: null,
    pipelineSha256: 'f'.repeat(64),
    sets: [set],
  };
});

async function writeMarker(engine: SetProvenance['engine']): Promise<void> {
  const provenance: SetProvenance = {
    kind: 'cpflow.image-set-provenance/v1',
    experimentId: manifest.experimentId,
    imageSet: { id: set.id, key: set.key, metadata: set.metadata },
    engine,
    pipelineSha256: manifest.pipelineSha256,
    inputs: [{ channel: 'DNA', uri: set.files[0].uri, size: 3, checksum: 'sha256:abc', sha256: 'abc' }],
    outputs: [],
    cpflow: { version: 'test', gitCommit: 'test' },
    worker: { host: 'h', pid: 1, attempt: 1 },
    startedAt: new Date().toISOString(),
    finishedAt: new Date().toISOString(),
  };
  await putBytes(bucket, `${layout.setPrefix(manifest.experimentId, set.key)}provenance.json`, JSON.stringify(provenance), 'application/json');
}

it('skips a set done in the same environment', async () => {
  await writeMarker({ name: 'cellprofiler', version: '5.0.0.dev784', environment });
  expect(await matchingProvenance(s3Store, manifest, set, identity)).toBeDefined();
});

it.each([
  ['another package set', { ...environment, packagesSha256: 'b'.repeat(64) }],
  ['another Python', { ...environment, python: '3.10.13' }],
  ['no recorded environment (written before it was recorded)', undefined],
])('re-runs a set done with the same build in %s', async (_label, recorded) => {
  await writeMarker({ name: 'cellprofiler', version: '5.0.0.dev784', ...(recorded ? { environment: recorded } : {}) });
  expect(await matchingProvenance(s3Store, manifest, set, identity)).toBeUndefined();
});

it('engines without an environment (builtin) still match their own provenance', async () => {
  await writeMarker({ name: 'builtin', version: 'cpflow-builtin 0.1.0' });
  expect(await matchingProvenance(s3Store, manifest, set, { name: 'builtin', version: 'cpflow-builtin 0.1.0' })).toBeDefined();
});
