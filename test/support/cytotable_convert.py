"""Convert cpflow per-image-set folders to one Parquet file with CytoTable's cellprofiler_csv preset.

Usage:
    python cytotable_convert.py SOURCE_DIR DEST.parquet [--join-by-set] [--compartments a,b,c]
                                [--joins SQL] [--join-page-key COLUMN]

SOURCE_DIR holds one or more folders of CellProfiler ExportToSpreadsheet tables without a file-name
prefix (Image.csv, Cells.csv, Cytoplasm.csv, Nuclei.csv, ...), e.g. a copy of
`cpflow/<experiment>/sets/`. CytoTable globs it recursively and concatenates same-named tables.

--join-by-set: every CellProfiler run numbers its first image 1, so several set folders repeat
    ImageNumber. CytoTable then adds a TableNumber column per folder (CRC32 of that folder's
    Image.csv) but the stock preset join matches on ImageNumber alone and multiplies rows across
    sets. This flag keeps TableNumber as an identifying column (Metadata_TableNumber) and joins on
    (Metadata_TableNumber, Metadata_ImageNumber), otherwise the preset's join unchanged.

Two deliberate departures from CytoTable's defaults, both to keep the run local and in-process:
- Parsl's ThreadPoolExecutor instead of the default HighThroughputExecutor, which starts an
  interchange process found on PATH and talks to it over ZeroMQ sockets.
- DuckDB connections without `INSTALL sqlite_scanner; INSTALL httpfs;`: CytoTable installs those
  extensions on every connection, which downloads them from DuckDB's extension server. CSV and
  Parquet reading are built into DuckDB; the extensions only serve SQLite sources and cloud paths.
  Extension auto-install is also switched off, so nothing is fetched behind our back.

Prints one JSON line on stdout: {"dest": ..., "seconds": ..., "cytotable": <version>}.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import duckdb
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

import cytotable
import cytotable.utils
from cytotable.constants import MAX_THREADS
from cytotable.presets import config as presets

PRESET = "cellprofiler_csv"

# The preset's join (CytoTable 1.2.6) with Metadata_TableNumber added to every USING clause and
# excluded from the repeated star selections, as CytoTable's own cellprofiler_sqlite_cpg0016_jump
# preset does for multi-plate data.
SET_AWARE_JOINS = """
    SELECT
        image.Metadata_TableNumber,
        image.Metadata_ImageNumber,
        COLUMNS('Image_FileName_.*'),
        cytoplasm.* EXCLUDE (Metadata_TableNumber, Metadata_ImageNumber),
        cells.* EXCLUDE (Metadata_TableNumber, Metadata_ImageNumber, Metadata_ObjectNumber),
        nuclei.* EXCLUDE (Metadata_TableNumber, Metadata_ImageNumber, Metadata_ObjectNumber)
    FROM
        read_parquet('cytoplasm.parquet') AS cytoplasm
    LEFT JOIN read_parquet('cells.parquet') AS cells USING (Metadata_TableNumber, Metadata_ImageNumber)
    LEFT JOIN read_parquet('nuclei.parquet') AS nuclei USING (Metadata_TableNumber, Metadata_ImageNumber)
    LEFT JOIN read_parquet('image.parquet') AS image USING (Metadata_TableNumber, Metadata_ImageNumber)
    WHERE
        cells.Metadata_ObjectNumber = cytoplasm.Metadata_Cytoplasm_Parent_Cells
        AND nuclei.Metadata_ObjectNumber = cytoplasm.Metadata_Cytoplasm_Parent_Nuclei
"""


def local_duckdb_reader() -> duckdb.DuckDBPyConnection:
    """CytoTable's _duckdb_reader settings minus the extension downloads (see module docstring)."""
    connection = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    return connection.execute(f"PRAGMA threads={MAX_THREADS}; PRAGMA preserve_insertion_order=FALSE;")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source_dir")
    parser.add_argument("dest_parquet")
    parser.add_argument("--join-by-set", action="store_true")
    parser.add_argument("--compartments", help="comma-separated table names, default: the preset's")
    parser.add_argument("--joins", help="DuckDB SQL replacing the preset's join")
    parser.add_argument("--join-page-key", help="column the joined result is paged by")
    args = parser.parse_args()

    if not os.path.isdir(args.source_dir):
        print(f"not a directory: {args.source_dir}", file=sys.stderr)
        return 2

    # CytoTable resolves every helper through cytotable.utils at call time (function-local
    # imports), so replacing the module attribute covers all of its DuckDB connections.
    cytotable.utils._duckdb_reader = local_duckdb_reader

    options = {}
    if args.join_by_set:
        options["identifying_columns"] = (*presets[PRESET]["CONFIG_IDENTIFYING_COLUMNS"], "TableNumber")
        options["joins"] = SET_AWARE_JOINS
        options["add_tablenumber"] = True
    if args.joins:
        options["joins"] = args.joins
    if args.compartments:
        options["compartments"] = [name.strip() for name in args.compartments.split(",") if name.strip()]
    if args.join_page_key:
        options["page_keys"] = {**presets[PRESET]["CONFIG_PAGE_KEYS"], "join": args.join_page_key}

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cytotable-parsl-") as run_dir:
        parsl_config = Config(
            executors=[ThreadPoolExecutor(label="cpflow_local", max_threads=max(1, MAX_THREADS))],
            run_dir=run_dir,
            usage_tracking=0,
        )
        # convert() loads this config and shuts Parsl down again before returning.
        cytotable.convert(
            source_path=args.source_dir,
            dest_path=args.dest_parquet,
            dest_datatype="parquet",
            preset=PRESET,
            parsl_config=parsl_config,
            **options,
        )
    print(
        json.dumps(
            {
                "dest": os.path.abspath(args.dest_parquet),
                "seconds": round(time.monotonic() - started, 3),
                "cytotable": cytotable.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
