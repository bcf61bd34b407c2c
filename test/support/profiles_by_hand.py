"""Well profiles "by hand": CytoTable on the per-set folders themselves, then pycytominer in one go.

Usage:
    python profiles_by_hand.py SETS_DIR PLATEMAP.csv OUT_DIR CONTROL_COLUMN CONTROL_VALUE

The independent path the profiles integration test compares cpflow's profiles step with. Where
cpflow concatenates the tables and aggregates wells in batches, this script hands CytoTable the set
folders as cpflow wrote them to S3 (one source per folder) and gives pycytominer the whole
single-cell table at once, as the Cell Painting profiling recipe does:
aggregate (median per well) → annotate → normalize (against the control wells) → feature_select.

Features: pycytominer's inference minus where-and-which columns (Location, Center, BoundingBox,
object numbers), the rule cpflow documents.

Writes OUT_DIR/{single_cells.parquet, well_profiles.csv, well_profiles_normalized.csv,
well_profiles_normalized_feature_select.csv}; prints one JSON line.
"""

import json
import os
import re
import sys
import tempfile

import duckdb
import pandas as pd
import pycytominer
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor
from pycytominer.cyto_utils import infer_cp_features

import cytotable
import cytotable.utils

POSITIONAL = re.compile(r"_(Location_|AreaShape_Center_|AreaShape_BoundingBox|Number_Object_Number$)")

# Nuclei joined to their image; with the ImageNumber unique per set there is no need for TableNumber.
JOINS = """
    SELECT image.Metadata_ImageNumber, image.Metadata_Plate, image.Metadata_Well,
           nuclei.* EXCLUDE (Metadata_ImageNumber)
    FROM read_parquet('nuclei.parquet') AS nuclei
    LEFT JOIN read_parquet('image.parquet') AS image USING (Metadata_ImageNumber)
"""


def local_duckdb():
    connection = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    return connection.execute("PRAGMA threads=2")


def main() -> int:
    sets_dir, platemap_path, out_dir, control_column, control_value = sys.argv[1:6]
    os.makedirs(out_dir, exist_ok=True)
    cytotable.utils._duckdb_reader = local_duckdb
    single_cells = os.path.join(out_dir, "single_cells.parquet")
    with tempfile.TemporaryDirectory() as run_dir:
        cytotable.convert(
            source_path=sets_dir,
            dest_path=single_cells,
            dest_datatype="parquet",
            preset="cellprofiler_csv",
            compartments=["nuclei"],
            joins=JOINS,
            page_keys={"image": "ImageNumber", "nuclei": "ImageNumber", "join": "Metadata_ImageNumber"},
            add_tablenumber=False,
            parsl_config=Config(executors=[ThreadPoolExecutor(label="by_hand", max_threads=2)], run_dir=run_dir, usage_tracking=0),
        )
    cells = pd.read_parquet(single_cells)
    features = [f for f in infer_cp_features(cells) if not POSITIONAL.search(f)]
    aggregated = pycytominer.aggregate(
        population_df=cells,
        strata=["Metadata_Plate", "Metadata_Well"],
        features=features,
        operation="median",
        compute_object_count=True,
        object_feature="Metadata_ObjectNumber",
    )
    platemap = pd.read_csv(platemap_path, dtype=str, keep_default_na=False)
    annotated = pycytominer.annotate(profiles=aggregated, platemap=platemap, join_on=["Metadata_well_position", "Metadata_Well"])
    annotated.to_csv(os.path.join(out_dir, "well_profiles.csv"), index=False)
    meta = [c for c in annotated.columns if c.startswith("Metadata_")]
    normalized = pycytominer.normalize(
        profiles=annotated,
        features=features,
        meta_features=meta,
        samples=f'Metadata_{control_column} == "{control_value}"',
        method="standardize",
    )
    normalized.to_csv(os.path.join(out_dir, "well_profiles_normalized.csv"), index=False)
    selected = pycytominer.feature_select(
        profiles=normalized,
        features=features,
        operation=["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"],
    )
    selected.to_csv(os.path.join(out_dir, "well_profiles_normalized_feature_select.csv"), index=False)
    print(json.dumps({"cells": len(cells), "wells": len(annotated), "features": features}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
