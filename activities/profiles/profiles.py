"""cpflow's profiles step: an experiment's tables → single-cell Parquet → well-level profiles.

Usage (run by activities/profiles/run.ts with the pinned venv's python):
    python profiles.py --tables DIR --platemap FILE --out DIR --options JSON

--tables holds one CSV per CellProfiler table (Image.csv, Nuclei.csv, ...): every image set's rows,
    already concatenated by cpflow (each set's ImageNumber is its image set id, unique within the
    experiment, so the rows concatenate exactly as CytoTable would concatenate the set folders).
--platemap is the platemap as submitted (pycytominer's layout: `well_position` plus annotation
    columns); read as text so control labels compare as written.
--out receives single_cells.parquet, profiles/*.parquet|csv and report-data.json.

Steps, in the order of the Cell Painting profiling recipe:
1. CytoTable (preset cellprofiler_csv) converts the tables to one single-cell Parquet file: one
   row per object, joined to its image (plate, well, file names).
2. pycytominer.aggregate: per-well median (or mean) of every feature, in batches of whole wells
   read from the Parquet file with DuckDB, so memory does not grow with the experiment.
3. pycytominer.annotate with the platemap (join on Metadata_well_position = Metadata_Well).
4. pycytominer.normalize per plate, against the negative-control wells when given, else all wells.
5. pycytominer.feature_select over all plates.
Then a small report-data.json for the report (one row per well: the chosen feature after
normalisation, two principal components, treatment, control flag) and which treatments separate
from the controls.

Progress goes to stderr as `progress: <text>` lines; the last stdout line is one JSON summary.
Exit status 3 means bad input (the message says which); anything else non-zero is a crash.
"""

import argparse
import json
import math
import os
import re
import resource
import sys
import tempfile
import time

INPUT_PROBLEM_EXIT = 3
SINGLE_CELLS = "single_cells.parquet"
PROFILE_STEMS = ("well_profiles", "well_profiles_normalized", "well_profiles_normalized_feature_select")

# Features that say where an object lies in the field or which number it got, not what it looks like.
POSITIONAL_FEATURE = re.compile(r"_(Location_|AreaShape_Center_|AreaShape_BoundingBox|Number_Object_Number$|Parent_|Children_.*_Count$)")
# Columns pycytominer would treat as features although they identify rather than measure.
NON_FEATURE = re.compile(r"_(ImageNumber|ObjectNumber|TableNumber)$")
CELLPROFILER_COMPARTMENTS = ("cells", "cytoplasm", "nuclei")
TREATMENT_COLUMNS = ("treatment", "pert_iname", "broad_sample", "compound", "perturbation")


class InputProblem(Exception):
    """Input the profiles cannot be computed from; reported as one line, never retried."""


def progress(text: str) -> None:
    print(f"progress: {text}", file=sys.stderr, flush=True)


def peak_rss_bytes() -> int:
    # Linux reports kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def quote_sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def local_duckdb(memory_limit: str, threads: int):
    """DuckDB without extension downloads (CSV and Parquet are built in) and with bounded memory."""
    import duckdb

    connection = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    connection.execute(f"SET memory_limit = {quote_sql_literal(memory_limit)}")
    connection.execute(f"SET threads = {int(threads)}")
    connection.execute("SET preserve_insertion_order = false")
    connection.execute(f"SET temp_directory = {quote_sql_literal(tempfile.gettempdir())}")
    return connection


def csv_header(path: str):
    import csv

    with open(path, newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle), [])


def table_files(tables_dir: str):
    """Table name (lower case, e.g. 'nuclei') → CSV path."""
    found = {}
    for name in sorted(os.listdir(tables_dir)):
        stem, extension = os.path.splitext(name)
        if extension.lower() == ".csv":
            found[stem.lower()] = os.path.join(tables_dir, name)
    return found


def plan_conversion(tables_dir: str):
    """Which compartments CytoTable converts and the DuckDB join that puts objects beside their image."""
    tables = table_files(tables_dir)
    if "image" not in tables:
        raise InputProblem("no Image table: the image sets' results have no Image.csv")
    objects = sorted(name for name in tables if name not in ("image", "experiment"))
    image_header = csv_header(tables["image"])
    image_columns = []
    for column in ("Metadata_Plate", "Metadata_Well"):
        if column in image_header:
            image_columns.append(f"image.{column}")
    if "Metadata_Well" not in image_header:
        raise InputProblem("the Image table has no Metadata_Well column, so cells cannot be matched to the platemap")
    # Other metadata (Site, ...) are renamed Image_Metadata_* by CytoTable; file names Image_FileName_*.
    if any(c.startswith("Metadata_") and c not in ("Metadata_Plate", "Metadata_Well") for c in image_header):
        image_columns.append("COLUMNS('Image_Metadata_.*')")
    if any(c.startswith("FileName_") for c in image_header):
        image_columns.append("COLUMNS('Image_FileName_.*')")
    image_select = "".join(f"{c},\n                " for c in image_columns)

    if all(name in objects for name in CELLPROFILER_COMPARTMENTS):
        # CytoTable's own cellprofiler_csv join (objects related through the cytoplasm's parents),
        # with the image's plate and well added.
        compartments = list(CELLPROFILER_COMPARTMENTS)
        joins = f"""
            SELECT
                image.Metadata_ImageNumber,
                {image_select}cytoplasm.* EXCLUDE (Metadata_ImageNumber),
                cells.* EXCLUDE (Metadata_ImageNumber, Metadata_ObjectNumber),
                nuclei.* EXCLUDE (Metadata_ImageNumber, Metadata_ObjectNumber)
            FROM read_parquet('cytoplasm.parquet') AS cytoplasm
            LEFT JOIN read_parquet('cells.parquet') AS cells USING (Metadata_ImageNumber)
            LEFT JOIN read_parquet('nuclei.parquet') AS nuclei USING (Metadata_ImageNumber)
            LEFT JOIN read_parquet('image.parquet') AS image USING (Metadata_ImageNumber)
            WHERE cells.Metadata_ObjectNumber = cytoplasm.Metadata_Cytoplasm_Parent_Cells
              AND nuclei.Metadata_ObjectNumber = cytoplasm.Metadata_Cytoplasm_Parent_Nuclei
        """
    elif len(objects) == 1:
        # One object table (the builtin engine's Nuclei): one row per object with its image.
        (name,) = objects
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise InputProblem(f"object table {name}.csv has a name CytoTable cannot use")
        compartments = [name]
        joins = f"""
            SELECT
                image.Metadata_ImageNumber,
                {image_select}{name}.* EXCLUDE (Metadata_ImageNumber)
            FROM read_parquet('{name}.parquet') AS {name}
            LEFT JOIN read_parquet('image.parquet') AS image USING (Metadata_ImageNumber)
        """
    else:
        listed = ", ".join(f"{n}.csv" for n in objects) or "none"
        raise InputProblem(
            f"profiles need one object table, or Cells, Cytoplasm and Nuclei; the image sets have {listed}"
        )
    return compartments, joins


def convert(tables_dir: str, dest: str, options: dict) -> dict:
    """CytoTable: the concatenated tables → one single-cell Parquet file."""
    import cytotable
    import cytotable.utils
    from parsl.config import Config
    from parsl.executors import ThreadPoolExecutor

    compartments, joins = plan_conversion(tables_dir)
    threads = max(1, int(options.get("threads", 2)))
    memory_limit = options["duckdbMemoryLimit"]
    # CytoTable resolves its DuckDB connections through cytotable.utils at call time; this one
    # neither downloads extensions (no network here) nor grows past the memory limit.
    cytotable.utils._duckdb_reader = lambda: local_duckdb(memory_limit, threads)
    page_keys = {"image": "ImageNumber", "join": "Metadata_ImageNumber"}
    for name in compartments:
        # Paged by image: ImageNumber ranges keep each image's objects together.
        page_keys[name] = "ImageNumber"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cpflow-parsl-") as run_dir:
        cytotable.convert(
            source_path=tables_dir,
            dest_path=dest,
            dest_datatype="parquet",
            preset="cellprofiler_csv",
            compartments=compartments,
            joins=joins,
            page_keys=page_keys,
            chunk_size=int(options["chunkSize"]),
            # One folder, one file per table: no TableNumber to tell sources apart.
            add_tablenumber=False,
            parsl_config=Config(
                executors=[ThreadPoolExecutor(label="cpflow_profiles", max_threads=threads)],
                run_dir=run_dir,
                usage_tracking=0,
            ),
        )
    return {"compartments": compartments, "seconds": round(time.monotonic() - started, 3)}


def read_platemap(path: str):
    import pandas as pd

    # Text, not inferred types: a control label "0" must match the platemap's "0", and empty cells
    # stay empty strings rather than NaN.
    platemap = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    # Cells and names trimmed, as cpflow submit read them when it checked the platemap.
    platemap.columns = [c.strip() for c in platemap.columns]
    platemap = platemap.apply(lambda column: column.str.strip())
    if "well_position" not in platemap.columns:
        raise InputProblem("the platemap has no well_position column")
    return platemap


def profile_features(connection, parquet_path: str, compartments):
    """pycytominer's feature inference on the Parquet schema, minus positional and identifying columns."""
    from pycytominer.cyto_utils import infer_cp_features

    empty = connection.execute(f"SELECT * FROM read_parquet({quote_sql_literal(parquet_path)}) LIMIT 0").df()
    inferred = infer_cp_features(empty, compartments=[c.capitalize() for c in compartments])
    numeric = [c for c in inferred if str(empty[c].dtype) not in ("object", "string", "str")]
    return [c for c in numeric if not POSITIONAL_FEATURE.search(c) and not NON_FEATURE.search(c)], list(empty.columns)


def aggregate_wells(connection, parquet_path: str, strata, features, options) -> "object":
    """pycytominer.aggregate over batches of whole wells, concatenated and sorted by well."""
    import pandas as pd
    import pycytominer

    source = f"read_parquet({quote_sql_literal(parquet_path)})"
    strata_sql = ", ".join(strata)
    wells = connection.execute(
        f"SELECT {strata_sql}, count(*) AS n FROM {source} GROUP BY ALL ORDER BY {strata_sql}"
    ).df()
    if wells.empty:
        raise InputProblem("the experiment's tables hold no objects to profile")
    if wells[strata].isna().any().any():
        raise InputProblem("some objects have no plate or well (empty Metadata_Plate/Metadata_Well in Image.csv)")
    cap = int(options["cellsPerBatch"])
    batch_of_well = []
    batch, in_batch = 0, 0
    for n in wells["n"]:
        if in_batch > 0 and in_batch + n > cap:
            batch, in_batch = batch + 1, 0
        batch_of_well.append(batch)
        in_batch += int(n)
    wells["batch"] = batch_of_well
    connection.register("cpflow_well_batches", wells[strata + ["batch"]])
    columns = ", ".join(f"s.{c}" for c in strata + ["Metadata_ObjectNumber"] + features)
    parts = []
    batches = batch + 1
    for index in range(batches):
        cells = connection.execute(
            f"SELECT {columns} FROM {source} AS s JOIN cpflow_well_batches AS b USING ({strata_sql}) WHERE b.batch = ?",
            [index],
        ).df()
        parts.append(
            pycytominer.aggregate(
                population_df=cells,
                strata=strata,
                features=features,
                operation=options["aggregation"],
                compute_object_count=True,
                object_feature="Metadata_ObjectNumber",
            )
        )
        del cells
        progress(f"aggregated {index + 1}/{batches} batches of wells")
    connection.unregister("cpflow_well_batches")
    profiles = pd.concat(parts, ignore_index=True).sort_values(strata, kind="stable").reset_index(drop=True)
    return profiles, int(wells["n"].sum())


def write_table(frame, out_dir: str, stem: str):
    """Parquet and CSV of one profiles table; both are byte-for-byte reproducible from the same frame."""
    parquet_path = os.path.join(out_dir, f"{stem}.parquet")
    csv_path = os.path.join(out_dir, f"{stem}.csv")
    frame.to_parquet(parquet_path, index=False, engine="pyarrow")
    frame.to_csv(csv_path, index=False)
    return [parquet_path, csv_path]


def finite_or_none(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, 6) if math.isfinite(number) else None


def separation(normalized, features, treatment_column, control_mask):
    """
    Per treatment: how far its wells lie from the control wells' centroid (Euclidean distance in
    normalised feature units, divided by sqrt(#features) so it reads as a typical per-feature shift),
    and whether it separates: every one of its wells lies farther out than every control well does
    from the centroid of the other controls (leave-one-out, so controls are not favoured by their own
    centroid).
    """
    import numpy as np

    if treatment_column is None or control_mask.sum() < 2 or not features:
        return []
    values = normalized[features].to_numpy(dtype=float)
    usable = np.isfinite(values).all(axis=0)
    values = values[:, usable]
    names = [f for f, keep in zip(features, usable) if keep]
    if values.shape[1] == 0:
        return []
    scale = math.sqrt(values.shape[1])
    controls = values[control_mask.to_numpy()]
    centroid = controls.mean(axis=0)
    loo = []
    for i in range(len(controls)):
        others = np.delete(controls, i, axis=0).mean(axis=0)
        loo.append(float(np.linalg.norm(controls[i] - others)) / scale)
    control_spread = max(loo)
    rows = []
    labels = normalized[treatment_column].astype(str)
    for treatment in sorted(set(labels[~control_mask])):
        mask = ((labels == treatment) & ~control_mask).to_numpy()
        wells = values[mask]
        distances = [float(np.linalg.norm(w - centroid)) / scale for w in wells]
        shift = wells.mean(axis=0) - centroid
        order = np.argsort(-np.abs(shift))[:3]
        rows.append(
            {
                "treatment": treatment,
                "wells": int(mask.sum()),
                "distance": round(float(np.linalg.norm(shift)) / scale, 6),
                "nearestWell": round(min(distances), 6),
                "controlSpread": round(control_spread, 6),
                "separates": min(distances) > control_spread,
                "topFeatures": [{"feature": names[i], "shift": round(float(shift[i]), 6)} for i in order],
            }
        )
    rows.sort(key=lambda r: -r["distance"])
    return rows


def principal_components(frame, features):
    import numpy as np
    from sklearn.decomposition import PCA

    values = frame[features].to_numpy(dtype=float) if features else np.zeros((len(frame), 0))
    usable = np.isfinite(values).all(axis=0) & (np.nanstd(values, axis=0) > 0) if values.shape[1] else []
    values = values[:, usable] if values.shape[1] else values
    if values.shape[0] < 3 or values.shape[1] < 2:
        return None, None
    pca = PCA(n_components=2, svd_solver="full")
    coordinates = pca.fit_transform(values)
    # A component's sign is arbitrary; fix it so the largest loading is positive (stable across runs).
    for k in range(2):
        if pca.components_[k][np.argmax(np.abs(pca.components_[k]))] < 0:
            coordinates[:, k] = -coordinates[:, k]
    return coordinates, {"explained": [round(float(v), 6) for v in pca.explained_variance_ratio_], "features": int(values.shape[1])}


def build_profiles(single_cells: str, platemap_path: str, out_dir: str, compartments, options: dict) -> dict:
    import pandas as pd
    import pycytominer

    timings = {}
    warnings = []
    profiles_dir = os.path.join(out_dir, "profiles")
    os.makedirs(profiles_dir, exist_ok=True)
    connection = local_duckdb(options["duckdbMemoryLimit"], max(1, int(options.get("threads", 2))))
    features, columns = profile_features(connection, single_cells, compartments)
    if not features:
        raise InputProblem("the single-cell table has no numeric object features to profile")
    strata = [c for c in ("Metadata_Plate", "Metadata_Well") if c in columns]

    started = time.monotonic()
    aggregated, cells = aggregate_wells(connection, single_cells, strata, features, options)
    timings["aggregate"] = round(time.monotonic() - started, 3)
    connection.close()

    platemap = read_platemap(platemap_path)
    annotated = pycytominer.annotate(
        profiles=aggregated,
        platemap=platemap,
        join_on=["Metadata_well_position", "Metadata_Well"],
    )
    if len(annotated) < len(aggregated):
        missing = sorted(set(aggregated["Metadata_Well"]) - set(platemap["well_position"]))
        raise InputProblem(f"wells {', '.join(missing[:5])} have results but are not in the platemap")
    if "Metadata_Plate" not in annotated.columns:
        annotated.insert(0, "Metadata_Plate", "")
    annotated = annotated.sort_values(["Metadata_Plate", "Metadata_Well"], kind="stable").reset_index(drop=True)
    meta = [c for c in annotated.columns if c.startswith("Metadata_")]
    written = write_table(annotated, profiles_dir, PROFILE_STEMS[0])

    controls = options.get("controls")
    control_column = f"Metadata_{controls['column']}" if controls else None
    if controls and control_column not in annotated.columns:
        raise InputProblem(f"the platemap has no column {controls['column']} to find the control wells in")
    control_query = f'{control_column} == "{controls["value"]}"' if controls else "all"

    started = time.monotonic()
    normalized_plates = []
    for plate, group in annotated.groupby("Metadata_Plate", sort=True):
        samples = control_query
        if controls and not (group[control_column] == controls["value"]).any():
            warnings.append(f"plate {plate or '(unnamed)'} has no {controls['column']}={controls['value']} well with results: normalised against all its wells")
            samples = "all"
        try:
            normalized_plates.append(
                pycytominer.normalize(
                    profiles=group.reset_index(drop=True),
                    features=features,
                    meta_features=meta,
                    samples=samples,
                    method=options["normalization"],
                )
            )
        except (ValueError, ArithmeticError) as problem:
            # Deterministic (e.g. spherize on fewer wells than features): retrying cannot help.
            raise InputProblem(f"{options['normalization']} normalisation of plate {plate or '(unnamed)'} failed: {problem}") from problem
    normalized = pd.concat(normalized_plates, ignore_index=True)
    timings["normalize"] = round(time.monotonic() - started, 3)
    written += write_table(normalized, profiles_dir, PROFILE_STEMS[1])

    started = time.monotonic()
    try:
        selected = pycytominer.feature_select(
            profiles=normalized,
            features=features,
            operation=list(options["featureSelection"]),
        )
    except ValueError as problem:
        # E.g. too few wells for any feature to vary: keep every normalised feature and say so.
        warnings.append(f"feature selection failed ({problem}); the feature-selected profiles keep every feature")
        selected = normalized
    timings["featureSelect"] = round(time.monotonic() - started, 3)
    written += write_table(selected, profiles_dir, PROFILE_STEMS[2])
    selected_features = [c for c in selected.columns if c in set(features)]

    # The report's data: one row per well, small however big the experiment.
    report_feature = options.get("reportFeature")
    if report_feature is None:
        report_feature = next((f for f in options["reportFeatures"] if f in features), features[0])
    elif report_feature not in features:
        warnings.append(f"report feature {report_feature} is not among the profile features; showing {features[0]}")
        report_feature = features[0]
    platemap_columns = [c for c in platemap.columns if c != "well_position"]
    treatment_column = next((c for c in TREATMENT_COLUMNS if c in platemap_columns), None)
    if treatment_column is None:
        others = [c for c in platemap_columns if not controls or c != controls["column"]]
        treatment_column = others[0] if others else (controls["column"] if controls else None)
    treatment_meta = f"Metadata_{treatment_column}" if treatment_column else None
    control_mask = (normalized[control_column] == controls["value"]) if controls else pd.Series(False, index=normalized.index)
    pca_features = selected_features if len(selected_features) >= 2 else features
    coordinates, pca = principal_components(normalized, pca_features)
    report_wells = []
    for i, row in normalized.iterrows():
        report_wells.append(
            {
                "plate": str(row["Metadata_Plate"]),
                "well": str(row["Metadata_Well"]),
                "treatment": str(row[treatment_meta]) if treatment_meta else "",
                "control": bool(control_mask.iloc[i]),
                "cells": int(row["Metadata_Object_Count"]),
                "value": finite_or_none(row[report_feature]),
                "pc1": finite_or_none(coordinates[i, 0]) if coordinates is not None else None,
                "pc2": finite_or_none(coordinates[i, 1]) if coordinates is not None else None,
            }
        )
    separations = separation(normalized, selected_features or features, treatment_meta, control_mask)
    report = {
        "feature": report_feature,
        "normalization": options["normalization"],
        "controls": controls,
        "treatmentColumn": treatment_column,
        "pca": pca,
        "wells": report_wells,
        "separation": separations,
        "warnings": warnings,
    }
    report_path = os.path.join(out_dir, "report-data.json")
    with open(report_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return {
        "cells": cells,
        "wells": int(len(normalized)),
        "plates": sorted({str(p) for p in normalized["Metadata_Plate"]}),
        "features": {"aggregated": len(features), "selected": len(selected_features)},
        "files": [os.path.relpath(p, out_dir) for p in written],
        "reportData": os.path.relpath(report_path, out_dir),
        "separation": separations,
        "warnings": warnings,
        "seconds": timings,
    }


def versions() -> dict:
    import importlib.metadata as metadata

    return {name: metadata.version(name) for name in ("cytotable", "pycytominer", "duckdb", "pandas", "pyarrow", "scikit-learn")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", required=True)
    parser.add_argument("--platemap", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--options", required=True, help="JSON: controls, normalization, featureSelection, ...")
    parser.add_argument("--skip-convert", action="store_true", help="reuse OUT/single_cells.parquet (benchmarks)")
    args = parser.parse_args()
    options = json.loads(args.options)
    os.makedirs(args.out, exist_ok=True)
    single_cells = os.path.join(args.out, SINGLE_CELLS)
    started = time.monotonic()
    try:
        if args.skip_convert:
            compartments, _ = plan_conversion(args.tables)
            conversion = {"compartments": compartments, "seconds": 0}
        else:
            progress("CytoTable: converting the tables to single-cell Parquet")
            conversion = convert(args.tables, single_cells, options)
        progress(f"CytoTable done in {conversion['seconds']:.1f} s; pycytominer: aggregating wells")
        summary = build_profiles(single_cells, args.platemap, args.out, conversion["compartments"], options)
    except InputProblem as problem:
        print(str(problem), file=sys.stderr)
        return INPUT_PROBLEM_EXIT
    summary["seconds"]["convert"] = conversion["seconds"]
    summary["seconds"]["total"] = round(time.monotonic() - started, 3)
    summary["singleCells"] = SINGLE_CELLS
    summary["compartments"] = conversion["compartments"]
    summary["versions"] = versions()
    summary["peakRssBytes"] = peak_rss_bytes()
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
