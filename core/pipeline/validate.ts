/**
 * What cpflow needs from a pipeline before it accepts it: the channels NamesAndTypes assigns, the
 * objects it creates, and an ExportToSpreadsheet writing into the Default Output Folder.
 */
import { PipelineError, settingValue, type Pipeline, type PipelineModule } from './cppipe';

export interface CpflowPipelineInfo {
  /** Image names NamesAndTypes assigns: cpflow's channel names, in pipeline order. */
  channels: string[];
  /** Object names the pipeline creates (or loads through NamesAndTypes), in pipeline order. */
  objects: string[];
  exportsSpreadsheet: true;
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

  const exporters = enabled.filter((m) => m.name === 'ExportToSpreadsheet');
  if (exporters.length === 0) {
    throw new PipelineError(
      p.source,
      'has no enabled ExportToSpreadsheet module: cpflow collects per-image-set results from its CSV files; add ExportToSpreadsheet at the end of the pipeline',
    );
  }
  for (const exporter of exporters) {
    const location = settingValue(exporter, 'Output file location') ?? '';
    if (location.startsWith('Elsewhere')) {
      throw new PipelineError(
        p.source,
        `ExportToSpreadsheet (module ${exporter.moduleNum}) writes to "${location}"; cpflow only collects files from the Default Output Folder (or a sub-folder of it)`,
      );
    }
  }

  const namesAndTypes = enabled.find((m) => m.name === 'NamesAndTypes');
  if (!namesAndTypes) {
    throw new PipelineError(
      p.source,
      'has no enabled NamesAndTypes module: cpflow maps image files to channels through NamesAndTypes (LoadData pipelines are not supported)',
    );
  }
  const { channels, objects: loadedObjects } = namesAndTypesAssignments(namesAndTypes);
  if (channels.length === 0) {
    throw new PipelineError(p.source, 'NamesAndTypes assigns no image names, so no channel can be matched');
  }

  const objects = [...loadedObjects];
  for (const module of enabled) {
    const text = OBJECT_NAME_SETTINGS[module.name] ?? GENERIC_OBJECT_NAME_SETTING;
    const name = settingValue(module, text)?.trim();
    if (name && name !== 'None' && !objects.includes(name)) objects.push(name);
  }
  return { channels, objects, exportsSpreadsheet: true };
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
