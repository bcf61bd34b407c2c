"""Imports every module class of the installed CellProfiler build and instantiates it headless.

Run with the CellProfiler venv's python:

    <venv>/bin/python deploy/local/python/module_inventory.py [--json]

For each module CellProfiler registers (cellprofiler_core's built-in modules and cellprofiler's):
import it, instantiate it, list its settings and visible settings, then save it in a one-module
pipeline and load that pipeline back (which runs the module's settings upgrade and parsing). Prints one
line per module and exits 1 if any module fails, naming it with the exception.

A module that needs an optional package the headless venv does not have on purpose (MySQLdb for
ExportToDatabase's MySQL mode, wxPython for the GUI) still has to load: CellProfiler guards those
imports itself, so a failure here is a real breakage.
"""
from __future__ import annotations

import io
import json
import logging
import sys
import traceback
import warnings


def main() -> int:
    warnings.simplefilter("ignore")
    # CellProfiler logs the (expected, guarded) MySQLdb import failure at ERROR level; keep it quiet.
    logging.basicConfig(level=logging.CRITICAL)

    from cellprofiler_core.preferences import set_headless, set_awt_headless

    set_headless()
    set_awt_headless(True)

    from cellprofiler_core.constants.modules import all_modules, badmodules
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.utilities.core.modules import fill_modules

    fill_modules()
    results: list[dict] = []
    for module_path, error in badmodules:
        results.append({"module": module_path, "ok": False, "stage": "import", "error": f"{type(error).__name__}: {error}"})

    for name in sorted(all_modules):
        stage = "instantiate"
        try:
            module = all_modules[name]()
            stage = "settings"
            settings = module.settings()
            module.visible_settings()
            stage = "save and load"
            pipeline = Pipeline()
            module.set_module_num(1)
            pipeline.add_module(module)
            saved = io.StringIO()
            pipeline.dump(saved, save_image_plane_details=False)
            reloaded = Pipeline()
            reloaded.loadtxt(io.StringIO(saved.getvalue()), raise_on_error=True)
            loaded = reloaded.modules(exclude_disabled=False)
            if len(loaded) != 1 or loaded[0].module_name != name:
                raise RuntimeError(f"reloaded pipeline holds {[m.module_name for m in loaded]}")
            results.append({"module": name, "ok": True, "settings": len(settings)})
        except Exception as err:  # noqa: BLE001 - every failure is reported, with the module named
            results.append(
                {
                    "module": name,
                    "ok": False,
                    "stage": stage,
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(limit=-3),
                }
            )

    failed = [r for r in results if not r["ok"]]
    if "--json" in sys.argv:
        print(json.dumps({"modules": results, "failed": len(failed)}, indent=2))
    else:
        for r in results:
            if r["ok"]:
                print(f"ok    {r['module']} ({r['settings']} settings)")
            else:
                print(f"FAIL  {r['module']} at {r['stage']}: {r['error']}")
        print(f"{len(results) - len(failed)} of {len(results)} modules import, instantiate and reload headless")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
