/**
 * Installs the profiling tools, CytoTable and pycytominer, into one pinned venv
 * (`<cacheDir>/cytotable-venv`), so the reduce pool's profiles step (activities/profiles/) and the
 * tests can turn cpflow's per-image-set folders into single-cell Parquet (CytoTable's
 * `cellprofiler_csv` preset) and well-level profiles (pycytominer).
 *
 * How (worked out by installing `cytotable==1.2.6` into a scratch venv on Python 3.11.7, 2026-11):
 * - A plain `pip install cytotable==1.2.6` resolves duckdb 2.0.0, whose Python API no longer has
 *   `DuckDBPyConnection.fetch_arrow_table`, which CytoTable 1.2.6 calls on every conversion
 *   ("'DuckDBPyConnection' object has no attribute 'fetch_arrow_table'"). duckdb is therefore
 *   pinned to 1.5.6, the newest 1.x release; everything else is what pip resolved.
 * - pycytominer 1.7.1 (the newest release, 2026-08) was then installed into that venv with the
 *   CytoTable pins as constraints: it resolved without moving any of them and added only its own
 *   dependencies (scikit-learn, SQLAlchemy, clevercsv, fire and theirs); `pip check` is clean.
 * - RUNTIME_PINS is the complete `pip freeze` of that working venv, so pip resolves nothing on its
 *   own and every install is the same. numpy 2.4 needs Python ≥ 3.11.
 * One venv rather than two: the profiles step runs CytoTable and pycytominer one after the other on
 * the same data, both sit on the same numpy/pandas/pyarrow, and one set of pins is one resolution
 * to keep consistent (and one ~50 s install instead of two ~800 MB copies of the same packages).
 * Verification: `import cytotable, pycytominer` reports both versions, `pip check` is clean, and
 * DuckDB still offers the Arrow call CytoTable uses.
 *
 * Running CytoTable here needs two local-only settings (network is limited to package registries);
 * test/support/cytotable_convert.py and activities/profiles/profiles.py apply them: Parsl's
 * ThreadPoolExecutor, and DuckDB connections that do not download the sqlite_scanner/httpfs extensions.
 *
 * A marker file written last (`cpflow-cytotable.json`, holding a hash of the pins) says the venv is
 * complete; a venv without a matching marker is rebuilt.
 * The venv, marker and lock mechanics live in venv.ts.
 */
import path from 'node:path';
import execa from 'execa';
import { cacheDir as defaultCacheDir } from './state';
import { installPinnedVenv, pipInstall, readyEntryPoint, runLogged } from './venv';

export const CYTOTABLE_VERSION = '1.2.6';
export const PYCYTOMINER_VERSION = '1.7.1';

/** Every package of the verified venv except cytotable and pycytominer. Changing a pin rebuilds the venv. */
export const CYTOTABLE_RUNTIME_PINS: readonly string[] = [
  'anndata==0.12.19',
  'array-api-compat==1.16.0',
  'azure-core==1.41.0',
  'azure-storage-blob==12.31.1',
  'azure-storage-file-datalake==12.26.1',
  'boto3==1.44.5',
  'botocore==1.44.5',
  'certifi==2026.10.18',
  'cffi==2.1.1',
  'chardet==7.7.0',
  'charset-normalizer==3.5.2',
  'clevercsv==0.8.5',
  'cloudpathlib==0.24.0',
  'cloudpickle==3.1.2',
  'cryptography==50.0.2',
  'dill==0.4.1',
  'donfig==0.8.1.post1',
  'duckdb==1.5.6',
  'filelock==4.2.11',
  'fire==0.7.1',
  'google-api-core==2.44.0',
  'google-auth==2.62.2',
  'google-cloud-core==2.8.0',
  'google-cloud-storage==3.17.1',
  'google-crc32c==1.9.0',
  'google-resumable-media==2.11.0',
  'googleapis-common-protos==1.76.0',
  'h5py==3.16.0',
  'idna==3.20',
  'isodate==0.7.2',
  'jmespath==1.1.0',
  'joblib==1.6.0',
  'legacy-api-wrap==1.5',
  'narwhals==2.29.0',
  'natsort==8.4.0',
  'numcodecs==0.16.6',
  'numpy==2.4.6',
  'opentelemetry-api==1.45.2',
  'packaging==26.3',
  'pandas==2.3.3',
  'parsl==2026.10.26',
  'proto-plus==1.29.0',
  'protobuf==7.36.2',
  'psutil==7.2.2',
  'pyarrow==26.0.1',
  'pyasn1-modules==0.4.2',
  'pyasn1==0.6.5',
  'pycparser==3.12',
  'python-dateutil==2.9.0.post0',
  'pytz==2026.6',
  'PyYAML==6.0.3',
  'pyzmq==27.3.0',
  'regex==2026.11.15',
  'requests==2.34.2',
  's3transfer==0.19.3',
  'scikit-learn==1.9.1',
  'scipy==1.17.1',
  'scverse-misc==0.0.3',
  'session-info2==0.4.1',
  'setproctitle==1.3.8',
  'six==1.17.0',
  'sortedcontainers==2.4.0',
  'SQLAlchemy==2.1.9',
  'tblib==3.2.2',
  'termcolor==3.3.0',
  'threadpoolctl==3.8.0',
  'typeguard==4.6.0',
  'typing-extensions==4.16.0',
  'tzdata==2026.6',
  'urllib3==2.8.0',
  'zarr==3.1.6',
];

const MARKER_FILE = 'cpflow-cytotable.json';
/** Hashed into the marker in this order; changing it would rebuild every installed venv. */
const ALL_PINS: readonly string[] = [`cytotable==${CYTOTABLE_VERSION}`, `pycytominer==${PYCYTOMINER_VERSION}`, ...CYTOTABLE_RUNTIME_PINS];
/** numpy 2.4 (pinned) needs ≥ 3.11; CytoTable 1.2.6 declares < 3.15. Verified on 3.11 only. */
const PYTHON_MINORS = { min: 11, max: 14 };

export interface CytoTableInstall {
  /** The venv's python, which can `import cytotable, pycytominer, duckdb, pyarrow`; `CPFLOW_PROFILES_PYTHON` for the reduce pool. */
  python: string;
  /** `cytotable.__version__` as installed. */
  version: string;
  /** Wall time of this call (near zero when the venv was reused). */
  seconds: number;
}

export function cytoTableVenv(cacheDir: string): string {
  return path.join(cacheDir, 'cytotable-venv');
}

/** The venv's python if the venv is complete and built from the current pins, else undefined. */
export function cytoTablePython(cacheDir: string): string | undefined {
  return readyEntryPoint(cytoTableVenv(cacheDir), MARKER_FILE, ALL_PINS, 'bin/python');
}

/** Installs (or reuses) the pinned CytoTable + pycytominer venv. Safe to call from several processes at once. */
export async function installCytoTable(
  cacheDir: string,
  log: (line: string) => void = () => undefined,
): Promise<CytoTableInstall> {
  const installed = await installPinnedVenv(
    {
      label: 'CytoTable',
      venv: cytoTableVenv(cacheDir),
      markerFile: MARKER_FILE,
      pins: ALL_PINS,
      expectedVersion: CYTOTABLE_VERSION,
      entryPoint: 'bin/python',
      pythonMinors: PYTHON_MINORS,
      installedVersion: importedVersion,
      install: async (python, log) => {
        await pipInstall(python, ALL_PINS, log);
        await runLogged(python, ['-m', 'pip', 'check', '--disable-pip-version-check'], log);
      },
      // The call whose removal in duckdb 2 breaks CytoTable 1.2.6 (see the header), and pycytominer's version.
      verify: async (python, log) => {
        await runLogged(python, ['-c', "import duckdb; duckdb.connect().values([1]).fetch_arrow_table()"], log);
        const pycytominer = await importedPycytominerVersion(python);
        if (pycytominer !== PYCYTOMINER_VERSION) throw new Error(`installed pycytominer reports ${pycytominer}, expected ${PYCYTOMINER_VERSION}`);
      },
    },
    log,
  );
  return { python: installed.entryPoint, version: installed.version, seconds: installed.seconds };
}

async function importedVersion(python: string): Promise<string> {
  const result = await execa(python, ['-c', 'import cytotable; print(cytotable.__version__)'], { reject: false });
  const version = result.stdout.trim();
  if (result.exitCode !== 0 || version === '') {
    throw new Error(`\`import cytotable\` failed (exit ${result.exitCode}): ${result.stderr.split('\n').slice(-10).join('\n')}`);
  }
  return version;
}

/** `pycytominer.__version__` (read from the package metadata; pycytominer 1.7 has no module attribute). */
export async function importedPycytominerVersion(python: string): Promise<string> {
  const result = await execa(python, ['-c', 'import importlib.metadata, pycytominer; print(importlib.metadata.version("pycytominer"))'], { reject: false });
  const version = result.stdout.trim();
  if (result.exitCode !== 0 || version === '') {
    throw new Error(`\`import pycytominer\` failed (exit ${result.exitCode}): ${result.stderr.split('\n').slice(-10).join('\n')}`);
  }
  return version;
}

// `npx tsx deploy/local/cytotable.ts [cacheDir]` installs (or reuses) the venv in cacheDir (default:
// the stack's cache, CPFLOW_CACHE_DIR) and prints the result as JSON on stdout; progress on stderr.
if (require.main === module) {
  installCytoTable(process.argv[2] ?? defaultCacheDir(), (line) => process.stderr.write(`${line}\n`)).then(
    (installed) => process.stdout.write(`${JSON.stringify(installed)}\n`),
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
