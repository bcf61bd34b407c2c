/**
 * What cpflow needs from a pipeline before it accepts it: how it loads images (NamesAndTypes rules
 * or a LoadData CSV), the channels NamesAndTypes assigns, the objects it creates, whether
 * ExportToSpreadsheet writes tables (into the Default Output Folder), and which modules pool image
 * sets (core/pipeline/pooling.ts).
 */
import { PipelineError, settingValue, type Pipeline, type PipelineModule } from './cppipe';
import { pipelineGroupingKeys, poolingFindings, type PoolingFinding } from './pooling';

export interface CpflowPipelineInfo {
  /** `files`: Images/NamesAndTypes match files by rules; `loaddata`: a LoadData CSV lists every image set. */
  input: 'files' | 'loaddata';
  /** Image names NamesAndTypes assigns: cpflow's channel names, in pipeline order (empty for LoadData: the CSV names them). */
  channels: string[];
  /** Object names the pipeline creates (or loads through NamesAndTypes), in pipeline order. */
  objects: string[];
  /**
   * ExportToSpreadsheet writes the per-set tables. Without it the pipeline's results are the files
   * it saves (an illumination pipeline that only saves its functions).
   */
  exportsSpreadsheet: boolean;
  /** Modules that compute across image sets: accepted only with --group-by. */
  pooling: PoolingFinding[];
  /** Metadata keys of the pipeline's own Groups module, when it groups. */
  groupingKeys?: string[];
  /**
   * SaveImages modules that do not record the saved file in the Image table: with several sets per
   * invocation their files cannot be told apart, so such batches run set by set.
   */
  unrecordedSaves: number[];
}

/**
 * Settings that name the objects a module creates. The three Identify modules have their own
 * wording; most other object-producing modules (FilterObjects, ExpandOrShrinkObjects,
 * SplitOrMergeObjects, …) say "Name the output objects".
 */
const OBJECT_NAME_SETTINGS: Record<string, string> = {
  IdentifyPrimaryObjects: 'Name the primary objects to be identified',
  IdentifySecondaryObjects: 'Name the objects to be identified',
  IdentifyTertiaryObjects: 'Name the tertiary objects to be identified',
};
const GENERIC_OBJECT_NAME_SETTING = 'Name the output objects';

const NAMES_AND_TYPES_OBJECTS = 'Objects';
const ASSIGN_ALL = 'All images';

/**
 * Checks what cpflow needs from a pipeline and extracts its channels and objects.
 * Throws PipelineError naming the file and the first problem found.
 */
export function validatePipelineForCpflow(p: Pipeline): CpflowPipelineInfo {
  const enabled = p.modules.filter((m) => m.enabled);

  const batch = enabled.find((m) => m.name === 'CreateBatchFiles');
  if (batch) {
    throw new PipelineError(
      p.source,
      `CreateBatchFiles (module ${batch.moduleNum}) makes CellProfiler write a batch file instead of analysing; cpflow is the batch system: remove or disable it`,
    );
  }

  const exporters = enabled.filter((m) => m.name === 'ExportToSpreadsheet');
  for (const exporter of exporters) {
    const location = settingValue(exporter, 'Output file location') ?? '';
    if (location.startsWith('Elsewhere')) {
      throw new PipelineError(
        p.source,
        `ExportToSpreadsheet (module ${exporter.moduleNum}) writes to "${location}"; cpflow only collects files from the Default Output Folder (or a sub-folder of it)`,
      );
    }
  }

  const unrecordedSaves = enabled
    .filter((m) => m.name === 'SaveImages' && settingValue(m, 'Record the file and path information to the saved image?') !== 'Yes')
    .map((m) => m.moduleNum);
  const common = {
    exportsSpreadsheet: exporters.length > 0,
    pooling: poolingFindings(p),
    groupingKeys: pipelineGroupingKeys(p),
    unrecordedSaves,
  };

  const loadData = enabled.find((m) => m.name === 'LoadData');
  if (loadData) {
    // The image sets come from a CSV (cpflow writes one per invocation and passes it with --data-file).
    return { input: 'loaddata', channels: [], objects: createdObjects(enabled, []), ...common };
  }
  const namesAndTypes = enabled.find((m) => m.name === 'NamesAndTypes');
  if (!namesAndTypes) {
    throw new PipelineError(
      p.source,
      'has neither an enabled NamesAndTypes nor a LoadData module: cpflow hands CellProfiler image files through NamesAndTypes rules or a LoadData CSV',
    );
  }
  const { channels, objects: loadedObjects } = namesAndTypesAssignments(namesAndTypes);
  if (channels.length === 0) {
    throw new PipelineError(p.source, 'NamesAndTypes assigns no image names, so no channel can be matched');
  }
  return { input: 'files', channels, objects: createdObjects(enabled, loadedObjects), ...common };
}

function createdObjects(enabled: PipelineModule[], loadedObjects: string[]): string[] {
  const objects = [...loadedObjects];
  for (const module of enabled) {
    const text = OBJECT_NAME_SETTINGS[module.name] ?? GENERIC_OBJECT_NAME_SETTING;
    const name = settingValue(module, text)?.trim();
    if (name && name !== 'None' && !objects.includes(name)) objects.push(name);
  }
  return objects;
}

/**
 * Reads NamesAndTypes' assignments. With "All images" the single header setting "Name to assign these
 * images" is the only name. With "Images matching rules" each rule group (it starts with "Select the
 * rule criteria") and each single-image group (its name setting is "Name to assign this image")
 * carries an image name, an object name and an image type; the type says which of the two applies.
 */
function namesAndTypesAssignments(module: PipelineModule): { channels: string[]; objects: string[] } {
  const channels: string[] = [];
  const objects: string[] = [];
  const add = (list: string[], name: string | undefined) => {
    const trimmed = name?.trim();
    if (trimmed && !list.includes(trimmed)) list.push(trimmed);
  };

  if (settingValue(module, 'Assign a name to') === ASSIGN_ALL) {
    add(channels, settingValue(module, 'Name to assign these images'));
    return { channels, objects };
  }

  // Walk the settings after the fixed header, splitting into groups at each group's first setting.
  interface Group {
    imageName?: string;
    objectName?: string;
    type?: string;
  }
  const groups: Group[] = [];
  let group: Group | undefined;
  let seenHeader = false;
  for (const setting of module.settings) {
    if (setting.text === 'Select the rule criteria') {
      seenHeader = true;
      group = {};
      groups.push(group);
      continue;
    }
    if (setting.text === 'Name to assign this image') {
      // Single images: the location setting before the name varies by revision, so start here.
      seenHeader = true;
      group = { imageName: setting.value };
      groups.push(group);
      continue;
    }
    if (!seenHeader || !group) continue;
    if (setting.text === 'Name to assign these images') group.imageName = setting.value;
    else if (setting.text === 'Name to assign these objects') group.objectName = setting.value;
    else if (setting.text === 'Select the image type' && group.type === undefined) group.type = setting.value;
  }
  for (const g of groups) {
    if (g.type === NAMES_AND_TYPES_OBJECTS) add(objects, g.objectName);
    else add(channels, g.imageName);
  }
  return { channels, objects };
}

/** ExportToSpreadsheet's file-name prefix when "Add a prefix to file names?" is Yes, else ''. */
export function spreadsheetFilePrefix(p: Pipeline): string {
  const exporter = p.modules.find((m) => m.enabled && m.name === 'ExportToSpreadsheet');
  if (!exporter) return '';
  if (settingValue(exporter, 'Add a prefix to file names?') !== 'Yes') return '';
  return settingValue(exporter, 'Filename prefix') ?? '';
}
