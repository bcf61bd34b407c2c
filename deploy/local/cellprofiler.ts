/**
 * Installs CellProfiler 5 headless into `<cacheDir>/cellprofiler-venv`, pinned to one build.
 *
 * How (worked out from the wheels' METADATA, the installed sources and runs of every module):
 * 1. A Python the build supports: 3.9, the only version its four packages declare, or 3.10 (same
 *    outputs); 3.11+ is refused because it mis-names measurements (cellprofiler-python.ts).
 * 2. `cellprofiler-library-nightly` and `cellprofiler-core-nightly` at CELLPROFILER_BUILD together
 *    with every runtime dependency, all pinned (RUNTIME_PINS is the complete working set, so pip
 *    resolves nothing on its own and every install is the same).
 * 3. `cellprofiler-nightly==CELLPROFILER_BUILD --no-deps`: its hard requirements wxPython (GUI) and
 *    mysqlclient (ExportToDatabase with MySQL) do not build here and are not needed headless; its
 *    other requirements are in RUNTIME_PINS. `pip check` then reports exactly those two as missing.
 * 4. Verification, all of which must pass before the venv is marked installed:
 *    - `cellprofiler --version` and a tiny headless run (four blobs, `Count_Blobs` must be 4);
 *    - python/module_inventory.py: every one of the build's 91 modules imports, instantiates and
 *      survives a save/load round trip headless;
 *    - python/api_audit.py: no library API the sources call is missing from the installed packages;
 *    - the module-coverage pipeline (module-coverage.ts): 30 modules run on generated images and
 *      produce what they should; a failure names the first module that broke.
 *
 * Upper bounds the sources force (CellProfiler's own requirements leave them open; the newest
 * releases break modules at run time, after import, so only running them shows it):
 * - matplotlib < 3.9 (3.8.4): `matplotlib.cm.get_cmap`, removed in 3.9, is called by ClassifyObjects
 *   (classifyobjects.py:1447), DisplayDataOnImage (displaydataonimage.py:423, 513),
 *   MeasureObjectNeighbors (measureobjectneighbors.py:596), MeasureObjectSkeleton (:460),
 *   TrackObjects (trackobjects.py:1389), cellprofiler_core/utilities/core/object.py:70 and
 *   cellprofiler_library/functions/image_processing.py:814, object_processing.py:1040.
 * - tifffile < 2025.2.18 (2024.8.30): SaveImages writes TIFFs with `compression=(8, 6)`
 *   (saveimages.py:790, the default "lossless compression"); tifffile 2025.2.18 made that tuple an
 *   error.
 * - zarr < 3 (2.18.2): the OME-Zarr reader uses `zarr.storage.FSStore` (readers/ngff_reader.py:58),
 *   which zarr 3 removed.
 * - numpy < 2, scipy < 1.11 (1.10.1): declared by cellprofiler-core/library; scikit-image 0.24.0 is
 *   the newest that fits scipy 1.10. docutils 0.15.2 as cellprofiler-nightly asks. The rest is what
 *   pip resolves for Python 3.9 within those bounds.
 * Headless runs need no JVM as long as the engine passes `-e imageio_reader`: the Bio-Formats reader
 * would start Java through scyjava/jgo and download ome:formats-gpl from a Maven repository this
 * machine cannot reach. scyjava/jpype1 are still installed because cellprofiler_core imports them.
 *
 * A marker file written last (`cpflow-cellprofiler.json`, holding the pins) says the venv is complete;
 * a venv without a matching marker is rebuilt. pip's cache (~/.cache/pip) is kept so a rebuild is
 * quick.
 * The venv, marker and lock mechanics live in venv.ts.
 */
import fs from 'node:fs';
import path from 'node:path';
import execa from 'execa';
import { HEADLESS_ENV, probeCellProfilerVersion } from '../../core/cellprofiler';
import { installPinnedVenv, pipInstall, readyEntryPoint, runLogged, venvPython } from './venv';
import { CELLPROFILER_PYTHON_MINORS, findCellProfilerPython } from './cellprofiler-python';
import { cachedModuleCoverage, describeModuleCoverage } from './module-coverage';

/** The one CellProfiler build cpflow runs (PyPI nightly of CellProfiler 5). */
export const CELLPROFILER_BUILD = '5.0.0.dev784';

/**
 * Every package of the working venv except cellprofiler-nightly itself (pip freeze of a verified
 * install on Python 3.9.18, 2026-11; the same set installs and gives identical module-coverage
 * outputs on 3.10.13). Changing any pin changes the marker and rebuilds the venv.
 */
export const RUNTIME_PINS: readonly string[] = [
  `cellprofiler-library-nightly==${CELLPROFILER_BUILD}`,
  `cellprofiler-core-nightly==${CELLPROFILER_BUILD}`,
  `centriole-nightly==${CELLPROFILER_BUILD}`,
  'annotated-types==0.7.0',
  'asciitree==1.0.0',
  'boto3==1.42.97',
  'botocore==1.42.97',
  'certifi==2026.10.18',
  'cffi==2.0.0',
  'charset-normalizer==3.5.2',
  'cjdk==0.4.1',
  'click==8.1.8',
  'contourpy==1.3.0',
  'cryptography==50.0.2',
  'cycler==0.12.1',
  'deprecation==2.1.0',
  'docutils==0.15.2',
  'fasteners==0.20',
  'fonttools==4.60.2',
  'fsspec==2025.10.0',
  'future==1.0.0',
  'google-api-core==2.30.3',
  'google-auth==2.50.0',
  'google-cloud-core==2.5.1',
  'google-cloud-storage==2.10.0',
  'google-crc32c==1.8.0',
  'google-resumable-media==2.8.2',
  'googleapis-common-protos==1.75.0',
  'h5py==3.14.0',
  'idna==3.20',
  'ImageIO==2.37.2',
  'importlib_metadata==8.7.1',
  'importlib_resources==6.5.2',
  'jgo==2.1.0',
  'Jinja2==3.1.6',
  'jmespath==1.1.0',
  'joblib==1.5.3',
  'jpype1==1.7.1',
  'kiwisolver==1.4.7',
  'lazy-loader==0.6',
  'lxml==6.1.3',
  'mahotas==1.4.18',
  'markdown-it-py==3.0.0',
  'MarkupSafe==3.0.4',
  'matplotlib==3.8.4',
  'mdurl==0.1.2',
  'networkx==3.2.1',
  'numcodecs==0.12.1',
  'numpy==1.26.4',
  'packaging==26.3',
  'pillow==11.3.0',
  'progressbar2==4.5.0',
  'proto-plus==1.27.2',
  'protobuf==6.33.6',
  'psutil==7.2.2',
  'pyasn1==0.6.5',
  'pyasn1_modules==0.4.2',
  'pycparser==2.23',
  'pydantic==2.13.5',
  'pydantic_core==2.46.5',
  'Pygments==2.21.0',
  'pyparsing==3.3.3',
  'python-dateutil==2.9.0.post0',
  'python-utils==3.9.1',
  'pyzmq==27.3.0',
  'RapidFuzz==3.13.0',
  'requests==2.32.5',
  'rich-click==1.9.9',
  'rich==15.0.0',
  's3transfer==0.16.1',
  'scikit-image==0.24.0',
  'scikit-learn==1.6.1',
  'scipy==1.10.1',
  'scyjava==1.12.4',
  'semver==3.0.4',
  'sentry-sdk==2.8.0',
  'six==1.17.0',
  'threadpoolctl==3.7.0',
  'tifffile==2024.8.30',
  'tomli==2.5.0',
  'tomli_w==1.2.0',
  'typing-inspection==0.4.2',
  'typing_extensions==4.16.0',
  'urllib3==1.26.20',
  'zarr==2.18.2',
  'zipp==3.23.1',
];

/** Requirements of cellprofiler-nightly deliberately left out (GUI / MySQL export only). */
const EXPECTED_MISSING = ['mysqlclient', 'wxpython'];

const MARKER_FILE = 'cpflow-cellprofiler.json';
/** Hashed into the marker in this order; changing it would rebuild every installed venv. */
const ALL_PINS: readonly string[] = [`cellprofiler-nightly==${CELLPROFILER_BUILD}`, ...RUNTIME_PINS];
/** See cellprofiler-python.ts: 3.9 as the build declares, 3.10 verified equal. */
const PYTHON_MINORS = CELLPROFILER_PYTHON_MINORS;

export function cellProfilerVenv(cacheDir: string): string {
  return path.join(cacheDir, 'cellprofiler-venv');
}

/**
 * Path of the installed `cellprofiler` if the venv is complete and built from the current pins
 * (its marker is written only after a verified run), else undefined. Cheap: no process is started.
 */
export function cellProfilerExecutable(cacheDir: string): string | undefined {
  return readyEntryPoint(cellProfilerVenv(cacheDir), MARKER_FILE, ALL_PINS, 'bin/cellprofiler');
}

export interface CellProfilerInstall {
  executable: string;
  /** Exact `cellprofiler --version` output. */
  version: string;
  /** Wall time of this call (near zero when the venv was reused). */
  seconds: number;
}

/** Installs (or reuses) the pinned headless CellProfiler. Safe to call from several processes at once. */
export async function installCellProfiler(
  cacheDir: string,
  log: (line: string) => void = () => undefined,
): Promise<CellProfilerInstall> {
  const venv = cellProfilerVenv(cacheDir);
  const installed = await installPinnedVenv(
    {
      label: 'CellProfiler',
      venv,
      markerFile: MARKER_FILE,
      pins: ALL_PINS,
      expectedVersion: CELLPROFILER_BUILD,
      entryPoint: 'bin/cellprofiler',
      pythonMinors: PYTHON_MINORS,
      basePython: async () => (await findCellProfilerPython()).executable,
      markerExtras: { build: CELLPROFILER_BUILD },
      installedVersion: probeCellProfilerVersion,
      install: async (python, log) => {
        await pipInstall(python, RUNTIME_PINS, log);
        await pipInstall(python, ['--no-deps', `cellprofiler-nightly==${CELLPROFILER_BUILD}`], log);
        await checkOnlyExpectedMissing(python, log);
      },
      verify: async (executable, log) => {
        await verifyHeadlessRun(venv, executable, log);
        await verifyEveryModule(venv, cacheDir, executable, log);
      },
    },
    log,
  );
  return { executable: installed.entryPoint, version: installed.version, seconds: installed.seconds };
}

async function checkOnlyExpectedMissing(python: string, log: (line: string) => void): Promise<void> {
  const result = await execa(python, ['-m', 'pip', 'check'], { reject: false });
  const problems = result.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('No broken requirements'));
  const unexpected = problems.filter(
    (line) => !EXPECTED_MISSING.some((name) => new RegExp(`requires ${name}\\b.*not installed`, 'i').test(line)),
  );
  if (unexpected.length > 0) throw new Error(`pip check found unexpected problems:\n${unexpected.join('\n')}`);
  log(`pip check: only ${EXPECTED_MISSING.join(' and ')} missing, as intended (GUI / MySQL export only)`);
}

const PYTHON_CHECKS_DIR = path.join(__dirname, 'python');

/**
 * Every module imports and instantiates, no API the sources call is missing, and the
 * module-coverage pipeline runs; throws naming the first module that breaks. The coverage result is
 * cached per environment, so `cpflow doctor` finds it without running CellProfiler again.
 */
export async function verifyEveryModule(venv: string, cacheDir: string, executable: string, log: (line: string) => void): Promise<void> {
  const python = venvPython(venv);
  for (const script of ['module_inventory.py', 'api_audit.py']) {
    const result = await execa(python, [path.join(PYTHON_CHECKS_DIR, script)], {
      reject: false,
      all: true,
      stdin: 'ignore',
      env: { ...process.env, ...HEADLESS_ENV },
    });
    const lines = (result.all ?? '').split('\n').filter((l) => l.trim() !== '');
    if (result.exitCode !== 0) {
      const failures = lines.filter((l) => l.startsWith('FAIL') || /^\S+\.py:\d+:/.test(l));
      throw new Error(`${script} failed (exit ${result.exitCode}):\n${(failures.length ? failures : lines.slice(-20)).join('\n')}`);
    }
    log(`${script}: ${lines[lines.length - 1] ?? 'ok'}`);
  }
  const coverage = await cachedModuleCoverage(cacheDir, executable, { fresh: true });
  if (!coverage.ok) throw new Error(`module-coverage pipeline: ${describeModuleCoverage(coverage)}`);
  log(`module coverage: ${describeModuleCoverage(coverage)} in ${coverage.seconds.toFixed(1)} s`);
}

/**
 * A real headless run: four bright discs on a dark 128×128 image, a pipeline that identifies them
 * and exports Image.csv. Proves the image reader, segmentation and export work without a display
 * or a JVM.
 */
async function verifyHeadlessRun(venv: string, executable: string, log: (line: string) => void): Promise<void> {
  const dir = await fs.promises.mkdtemp(path.join(venv, '.verify-'));
  try {
    const image = path.join(dir, 'blobs_DNA.tif');
    const makeImage = [
      'import numpy as np, tifffile, sys',
      'yy, xx = np.mgrid[0:128, 0:128]',
      'img = np.full((128, 128), 10, np.uint8)',
      'for cy, cx in [(32, 32), (32, 96), (96, 32), (96, 96)]:',
      '    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 200',
      'tifffile.imwrite(sys.argv[1], img)',
    ].join('\n');
    await runLogged(venvPython(venv), ['-c', makeImage, image], log, HEADLESS_ENV);
    const pipeline = path.join(dir, 'verify.cppipe');
    await fs.promises.writeFile(pipeline, VERIFY_PIPELINE);
    const fileList = path.join(dir, 'files.txt');
    await fs.promises.writeFile(fileList, `${image}\n`);
    const out = path.join(dir, 'out');
    const done = path.join(dir, 'done.txt');
    await fs.promises.mkdir(out);
    const result = await execa(
      executable,
      ['-c', '-r', '-p', pipeline, '--file-list', fileList, '-o', out, '-t', dir, '-d', done, '-e', 'imageio_reader'],
      { reject: false, all: true, stdin: 'ignore', env: { ...process.env, ...HEADLESS_ENV } },
    );
    const doneText = await fs.promises.readFile(done, 'utf8').catch(() => '');
    if (doneText.trim() !== 'Complete') {
      throw new Error(`verification run failed (exit ${result.exitCode}):\n${(result.all ?? '').split('\n').slice(-30).join('\n')}`);
    }
    const [header, row] = (await fs.promises.readFile(path.join(out, 'Image.csv'), 'utf8')).split(/\r?\n/);
    const count = Number(row?.split(',')[header.split(',').indexOf('Count_Blobs')]);
    if (count !== 4) throw new Error(`verification run found ${count} objects in an image with 4`);
    log('verification run: 4 of 4 objects found');
  } finally {
    await fs.promises.rm(dir, { recursive: true, force: true });
  }
}

/**
 * Minimal pipeline for the verification run (module blocks as CellProfiler 4/5 save them, taken from
 * the ExampleHuman example with NamesAndTypes set to "All images").
 */
const VERIFY_PIPELINE = String.raw`CellProfiler Pipeline: http://www.cellprofiler.org
Version:5
DateRevision:400
GitHash:
ModuleCount:6
HasImagePlaneDetails:False

Images:[module_num:1|svn_version:'Unknown'|variable_revision_number:2|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]
    :
    Filter images?:Images only
    Select the rule criteria:and (extension does isimage) (directory doesnot containregexp "[\\\\\\\\/]\\\\.")

Metadata:[module_num:2|svn_version:'Unknown'|variable_revision_number:6|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]
    Extract metadata?:No
    Metadata data type:Text
    Metadata types:{}
    Extraction method count:1
    Metadata extraction method:Extract from file/folder names
    Metadata source:File name
    Regular expression to extract from file name:^(?P<Plate>.*)_(?P<Well>[A-P][0-9]{2})_s(?P<Site>[0-9])_w(?P<ChannelNumber>[0-9])
    Regular expression to extract from folder name:(?P<Date>[0-9]{4}_[0-9]{2}_[0-9]{2})$
    Extract metadata from:All images
    Select the filtering criteria:and (file does contain "")
    Metadata file location:Elsewhere...|
    Match file and image metadata:[]
    Use case insensitive matching?:No
    Metadata file name:
    Does cached metadata exist?:No

NamesAndTypes:[module_num:3|svn_version:'Unknown'|variable_revision_number:8|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]
    Assign a name to:All images
    Select the image type:Grayscale image
    Name to assign these images:DNA
    Match metadata:[]
    Image set matching method:Order
    Set intensity range from:Image metadata
    Assignments count:1
    Single images count:0
    Maximum intensity:255.0
    Process as 3D?:No
    Relative pixel spacing in X:1.0
    Relative pixel spacing in Y:1.0
    Relative pixel spacing in Z:1.0
    Select the rule criteria:and (file does contain "")
    Name to assign these images:DNA
    Name to assign these objects:Cell
    Select the image type:Grayscale image
    Set intensity range from:Image metadata
    Maximum intensity:255.0

Groups:[module_num:4|svn_version:'Unknown'|variable_revision_number:2|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]
    Do you want to group your images?:No
    grouping metadata count:1
    Metadata category:None

IdentifyPrimaryObjects:[module_num:5|svn_version:'Unknown'|variable_revision_number:14|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]
    Select the input image:DNA
    Name the primary objects to be identified:Blobs
    Typical diameter of objects, in pixel units (Min,Max):8,80
    Discard objects outside the diameter range?:Yes
    Discard objects touching the border of the image?:Yes
    Method to distinguish clumped objects:Intensity
    Method to draw dividing lines between clumped objects:Intensity
    Size of smoothing filter:10
    Suppress local maxima that are closer than this minimum allowed distance:7.0
    Speed up by using lower-resolution image to find local maxima?:Yes
    Fill holes in identified objects?:After declumping only
    Automatically calculate size of smoothing filter for declumping?:Yes
    Automatically calculate minimum allowed distance between local maxima?:Yes
    Handling of objects if excessive number of objects identified:Continue
    Maximum number of objects:500
    Display accepted local maxima?:No
    Select maxima color:Blue
    Use advanced settings?:No
    Threshold setting version:11
    Threshold strategy:Global
    Thresholding method:Minimum Cross-Entropy
    Threshold smoothing scale:1.3488
    Threshold correction factor:1.0
    Lower and upper bounds on threshold:0.0,1.0
    Manual threshold:0.0
    Select the measurement to threshold with:None
    Two-class or three-class thresholding?:Two classes
    Assign pixels in the middle intensity class to the foreground or the background?:Foreground
    Size of adaptive window:50
    Lower outlier fraction:0.05
    Upper outlier fraction:0.05
    Averaging method:Mean
    Variance method:Standard deviation
    # of deviations:2.0
    Thresholding method:Otsu

ExportToSpreadsheet:[module_num:6|svn_version:'Unknown'|variable_revision_number:13|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]
    Select the column delimiter:Comma (",")
    Add image metadata columns to your object data file?:No
    Add image file and folder names to your object data file?:No
    Select the measurements to export:No
    Calculate the per-image mean values for object measurements?:No
    Calculate the per-image median values for object measurements?:No
    Calculate the per-image standard deviation values for object measurements?:No
    Output file location:Default Output Folder|
    Create a GenePattern GCT file?:No
    Select source of sample row name:Metadata
    Select the image to use as the identifier:None
    Select the metadata to use as the identifier:None
    Export all measurement types?:Yes
    Press button to select measurements:
    Representation of Nan/Inf:NaN
    Add a prefix to file names?:No
    Filename prefix:MyExpt_
    Overwrite existing files without warning?:Yes
    Data to export:Do not use
    Combine these object measurements with those of the previous object?:No
    File name:DATA.csv
    Use the object name for the file name?:Yes
`;
