/**
 * Plate geometry from well names (`A01`, `p24`, `AF48`). The plate size is inferred from the wells
 * present: the smallest standard format (96, 384, 1536) that contains them all.
 */

export interface WellPosition {
  /** 0-based row index (A = 0). */
  row: number;
  /** 1-based column number. */
  column: number;
}

export interface PlateFormat {
  wells: 96 | 384 | 1536;
  rows: number;
  columns: number;
}

const FORMATS: PlateFormat[] = [
  { wells: 96, rows: 8, columns: 12 },
  { wells: 384, rows: 16, columns: 24 },
  { wells: 1536, rows: 32, columns: 48 },
];

/** `A01` → { row: 0, column: 1 }; two-letter rows (`AA`…`AF`) follow `Z` as on 1536-well plates. */
export function parseWell(well: string): WellPosition | undefined {
  const match = /^([A-Za-z]{1,2})[-_ ]?0*(\d{1,2})$/.exec(well.trim());
  if (!match) return undefined;
  const letters = match[1].toUpperCase();
  const column = Number(match[2]);
  const row = letters.length === 1 ? letters.charCodeAt(0) - 65 : 26 * (letters.charCodeAt(0) - 64) + (letters.charCodeAt(1) - 65);
  if (column < 1) return undefined;
  return { row, column };
}

export function rowLabel(row: number): string {
  return row < 26 ? String.fromCharCode(65 + row) : String.fromCharCode(64 + Math.floor(row / 26)) + String.fromCharCode(65 + (row % 26));
}

/** Smallest standard plate holding every position, or undefined when none fits (then no heatmap is drawn). */
export function inferPlateFormat(positions: WellPosition[]): PlateFormat | undefined {
  const maxRow = Math.max(...positions.map((p) => p.row));
  const maxColumn = Math.max(...positions.map((p) => p.column));
  return FORMATS.find((format) => maxRow < format.rows && maxColumn <= format.columns);
}
