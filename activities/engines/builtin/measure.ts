/** One value per measurement column, keyed by CellProfiler's measurement name. */
export type MeasurementRow = Record<string, number>;

export interface ChannelIntensity {
  /** Channel name, used in the column suffix (`Intensity_MeanIntensity_<name>`). */
  name: string;
  /** [0,1] intensities, same size as the label raster. */
  data: Float32Array;
}

/**
 * Per-object size, position and intensity measurements, named and defined as CellProfiler's
 * MeasureObjectSizeShape / MeasureObjectIntensity name them: coordinates are 0-based pixel indices,
 * the bounding-box maximum is exclusive (min + extent), intensities are on the [0,1] scale.
 * Returns one row per object, in object-number order (object n is row n - 1).
 */
export function measureObjects(
  labels: Int32Array,
  count: number,
  width: number,
  height: number,
  channels: ChannelIntensity[],
): MeasurementRow[] {
  const area = new Float64Array(count + 1);
  const sumX = new Float64Array(count + 1);
  const sumY = new Float64Array(count + 1);
  const minX = new Int32Array(count + 1).fill(width);
  const minY = new Int32Array(count + 1).fill(height);
  const maxX = new Int32Array(count + 1).fill(-1);
  const maxY = new Int32Array(count + 1).fill(-1);
  const intensitySum = channels.map(() => new Float64Array(count + 1));
  const intensityMax = channels.map(() => new Float64Array(count + 1).fill(-Infinity));

  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      const object = labels[p];
      if (!object) continue;
      area[object]++;
      sumX[object] += x;
      sumY[object] += y;
      if (x < minX[object]) minX[object] = x;
      if (y < minY[object]) minY[object] = y;
      if (x > maxX[object]) maxX[object] = x;
      if (y > maxY[object]) maxY[object] = y;
      for (let c = 0; c < channels.length; c++) {
        const value = channels[c].data[p];
        intensitySum[c][object] += value;
        if (value > intensityMax[c][object]) intensityMax[c][object] = value;
      }
    }
  }

  const rows: MeasurementRow[] = [];
  for (let object = 1; object <= count; object++) {
    const objectArea = area[object];
    const centerX = objectArea ? sumX[object] / objectArea : NaN;
    const centerY = objectArea ? sumY[object] / objectArea : NaN;
    const row: MeasurementRow = {
      AreaShape_Area: objectArea,
      AreaShape_BoundingBoxMaximum_X: maxX[object] + 1,
      AreaShape_BoundingBoxMaximum_Y: maxY[object] + 1,
      AreaShape_BoundingBoxMinimum_X: minX[object],
      AreaShape_BoundingBoxMinimum_Y: minY[object],
      AreaShape_Center_X: centerX,
      AreaShape_Center_Y: centerY,
      AreaShape_EquivalentDiameter: Math.sqrt((4 * objectArea) / Math.PI),
    };
    channels.forEach((channel, c) => {
      const sum = intensitySum[c][object];
      row[`Intensity_IntegratedIntensity_${channel.name}`] = sum;
      row[`Intensity_MaxIntensity_${channel.name}`] = objectArea ? intensityMax[c][object] : NaN;
      row[`Intensity_MeanIntensity_${channel.name}`] = objectArea ? sum / objectArea : NaN;
    });
    row.Location_Center_X = centerX;
    row.Location_Center_Y = centerY;
    rows.push(row);
  }
  return rows;
}
