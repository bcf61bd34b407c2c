import type { ThresholdMethod } from './segment';

/** Builtin-engine settings that can be read from a CellProfiler pipeline. */
export interface PipelineDerivedOptions {
  nucleiChannel?: string;
  objectName?: string;
  minDiameter?: number;
  maxDiameter?: number;
  thresholdMethod?: ThresholdMethod;
}

/**
 * Reads the few settings the builtin engine honours from the first IdentifyPrimaryObjects module of a
 * CellProfiler text pipeline (.cppipe). Deliberately tolerant and small: it is not a pipeline parser
 * (activities/pipeline/ has that); unknown or missing settings are simply left out.
 */
export function builtinOptionsFromPipeline(cppipeText: string): PipelineDerivedOptions {
  const lines = cppipeText.split(/\r?\n/);
  const start = lines.findIndex((line) => /^IdentifyPrimaryObjects:/.test(line));
  if (start < 0) return {};
  const settings = new Map<string, string>();
  for (let i = start + 1; i < lines.length; i++) {
    const line = lines[i];
    // Module settings are indented; the module ends at a blank or unindented line.
    if (!/^\s+\S/.test(line)) break;
    const separator = line.indexOf(':');
    if (separator < 0) continue;
    const name = line.slice(0, separator).trim();
    // First occurrence wins: later "Thresholding method" lines belong to advanced sub-settings.
    if (!settings.has(name)) settings.set(name, line.slice(separator + 1).trim());
  }

  const options: PipelineDerivedOptions = {};
  const input = settings.get('Select the input image');
  if (input) options.nucleiChannel = input;
  const objectName = settings.get('Name the primary objects to be identified');
  if (objectName) options.objectName = objectName;
  const diameters = settings.get('Typical diameter of objects, in pixel units (Min,Max)');
  const match = diameters?.match(/^\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$/);
  if (match) {
    options.minDiameter = Number(match[1]);
    options.maxDiameter = Number(match[2]);
  }
  const method = settings.get('Thresholding method')?.toLowerCase();
  if (method === 'otsu') options.thresholdMethod = 'otsu';
  else if (method === 'minimum cross-entropy' || method === 'minimum cross entropy') {
    options.thresholdMethod = 'minimumCrossEntropy';
  }
  return options;
}
