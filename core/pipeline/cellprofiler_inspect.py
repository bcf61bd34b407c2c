"""
cpflow's submit-time look at a pipeline through CellProfiler itself (run with the CellProfiler
venv's python; core/pipeline/inspect.ts starts it). What CellProfiler's `--print-groups` prints for
a measurements file, computed straight from the pipeline and the experiment's files, plus what
CellProfiler says about the pipeline:

    python cellprofiler_inspect.py --pipeline P [--file-list F | --data-file D] [--plugins-directory X]

prints one JSON object on the last line of stdout:

    {"modules": [{"num", "name", "enabled", "aggregation", "warning", "error"}],
     "loadError": str|null,                # a module CellProfiler does not know (a missing plugin)
     "prepareRunError": str|null,          # e.g. rules matching no file
     "imageSets": [{"imageNumber", "groupNumber", "groupIndex", "urls": {name: url}, "metadata": {k: v}}],
     "groupingKeys": [...],
     "logWarnings": [...]}                 # CellProfiler's own warnings while preparing the run

Nothing is analysed: prepare_run only lists files, applies the input modules' rules and groups.
"""
import argparse
import json
import logging
import os
import sys


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        text = record.getMessage()
        # Noise of every headless run, not about this pipeline.
        if "MySQL could not be loaded" in text or "Workspace file list is empty" in text:
            return
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text}: {record.exc_info[1]}"
        self.messages.append(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--file-list")
    parser.add_argument("--data-file")
    parser.add_argument("--plugins-directory")
    args = parser.parse_args()

    collect = Collect()
    logging.getLogger().addHandler(collect)
    logging.getLogger().setLevel(logging.WARNING)

    import cellprofiler_core.preferences as prefs

    prefs.set_headless()
    prefs.set_awt_headless(True)
    if args.plugins_directory:
        prefs.set_plugin_directory(args.plugins_directory, globally=False)
    if args.data_file:
        prefs.set_data_file(os.path.abspath(args.data_file))
    # Loads CellProfiler's modules and any plugins (once: a second fill would warn about every module).
    import cellprofiler.modules  # noqa: F401
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.image import ImageSetList
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.pipeline.event import PrepareRunError, LoadException
    from cellprofiler_core.setting import ValidationError
    from cellprofiler_core.workspace import Workspace
    from cellprofiler_core.constants.measurement import GROUP_NUMBER, GROUP_INDEX, C_URL, C_OBJECTS_URL

    result = {"modules": [], "loadError": None, "prepareRunError": None, "imageSets": [], "groupingKeys": [], "logWarnings": []}
    pipeline = Pipeline()
    load_errors = []

    def listener(_pipeline, event):
        if isinstance(event, LoadException):
            load_errors.append(str(event.error))
        if isinstance(event, PrepareRunError):
            result["prepareRunError"] = event.message

    pipeline.add_listener(listener)
    pipeline.load(args.pipeline)
    if load_errors:
        # CellProfiler runs what it could load and calls that complete: nothing else is worth asking.
        result["loadError"] = "; ".join(load_errors)
        result["logWarnings"] = collect.messages
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        sys.stdout.flush()
        return

    for module in pipeline.modules(False):
        entry = {
            "num": module.module_num,
            "name": module.module_name,
            "enabled": bool(module.enabled),
            "aggregation": bool(module.is_aggregation_module()) if module.enabled else False,
            "warning": None,
            "error": None,
        }
        if module.enabled:
            try:
                module.test_valid(pipeline)
            except ValidationError as e:
                entry["error"] = e.message
            except Exception as e:  # a module's own check crashed: report, do not stop
                entry["error"] = str(e)
            try:
                module.test_module_warnings(pipeline)
            except ValidationError as e:
                entry["warning"] = e.message
            except Exception:
                pass
        result["modules"].append(entry)

    if args.file_list:
        pipeline.read_file_list(args.file_list)

    measurements = Measurements()
    workspace = Workspace(pipeline, None, None, None, measurements, ImageSetList())
    if len(pipeline.modules()) > 1:
        from cellprofiler_core.modules.metadata import Metadata
        from cellprofiler_core.constants.modules.metadata import X_AUTOMATIC_EXTRACTION

        second = pipeline.modules()[1]
        if isinstance(second, Metadata) and second.wants_metadata.value:
            for group in second.extraction_methods:
                if group.extraction_method.value == X_AUTOMATIC_EXTRACTION:
                    pipeline.set_needs_headless_extraction(True)
    try:
        ok = pipeline.prepare_run(workspace)
    except Exception as e:  # noqa: BLE001
        ok = False
        result["prepareRunError"] = result["prepareRunError"] or f"{type(e).__name__}: {e}"
    if ok:
        keys, groupings = pipeline.get_groupings(workspace)
        result["groupingKeys"] = list(keys)
        features = measurements.get_feature_names("Image")
        url_features = [f for f in features if f.startswith(C_URL + "_") or f.startswith(C_OBJECTS_URL + "_")]
        metadata_features = [f for f in features if f.startswith("Metadata_")]
        for image_number in measurements.get_image_numbers():
            n = int(image_number)
            result["imageSets"].append(
                {
                    "imageNumber": n,
                    "groupNumber": int(measurements["Image", GROUP_NUMBER, n]),
                    "groupIndex": int(measurements["Image", GROUP_INDEX, n]),
                    "urls": {f.split("_", 1)[1] if f.startswith(C_URL + "_") else "Objects:" + f.split("_", 2)[2]: str(measurements["Image", f, n]) for f in url_features},
                    "metadata": {f[len("Metadata_"):]: str(measurements["Image", f, n]) for f in metadata_features},
                }
            )
    elif result["prepareRunError"] is None:
        result["prepareRunError"] = "CellProfiler could not prepare the run (no image sets)"
    result["logWarnings"] = collect.messages
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
    # CellProfiler may leave a JVM or thread pools behind; the answer is printed.
    os._exit(0)
