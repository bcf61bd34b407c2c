"""Finds third-party APIs the installed CellProfiler calls that the installed libraries no longer have.

Run with the CellProfiler venv's python:

    <venv>/bin/python deploy/local/python/api_audit.py [--json]

Why: CellProfiler's own requirements are loose upper-bound-wise (matplotlib<4, scikit-image>=0.20,
...), so a resolver picks releases that removed functions CellProfiler still calls. Such a call only
fails when the module runs (e.g. `matplotlib.cm.get_cmap`, removed in matplotlib 3.9, used by
ClassifyObjects), so importing the modules proves nothing. This script reads the sources of
cellprofiler, cellprofiler_core, cellprofiler_library and centriole (the GUI package excluded: it needs
wxPython, which a headless venv does not have) and, for every name reached through an imported
module (`np.float`, `matplotlib.cm.get_cmap`, `from skimage.morphology import watershed`), checks that
the installed package still has it; for every call of such a function it also checks the keyword
arguments against the function's signature (`peak_local_max(indices=...)`, `multichannel=...`).

It is a static approximation: a local variable that shadows an imported module name may be reported
(each finding names file and line, so it can be read). Exit status 1 when anything is found.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGES = ("cellprofiler", "cellprofiler_core", "cellprofiler_library", "centriole")
# wxPython is not installed headless; the GUI and its helpers are never imported by a headless run.
EXCLUDED_PARTS = ("gui",)
# Roots whose attributes are looked up. Standard library and CellProfiler's own packages are included
# too: a name missing there is just as fatal.
SKIPPED_ROOTS = {"wx", "MySQLdb", "javabridge", "bioformats", "__future__"}

# Findings that cannot happen in a headless run on Linux, each with the reason. Matched on
# (file, missing name); anything else is reported.
NOT_APPLICABLE = {
    ("cellprofiler/__main__.py", "cellprofiler.gui.app"): "GUI start-up; headless runs never import it",
    ("cellprofiler/modules/crop.py", "matplotlib.backends.backend_wxagg.FigureCanvasWxAgg"): "interactive cropping dialog (GUI)",
    ("cellprofiler/modules/definegrid.py", "matplotlib.backends.backend_wxagg"): "interactive grid dialog (GUI)",
    ("cellprofiler/modules/editobjectsmanually.py", "cellprofiler.gui.editobjectsdlg.EditObjectsDialog"): "interactive editing dialog (GUI)",
    ("cellprofiler/modules/identifyobjectsmanually.py", "cellprofiler.gui.editobjectsdlg.EditObjectsDialog"): "interactive outlining dialog (GUI)",
    ("cellprofiler/modules/plugins/segmentationtemplatewithdependencies.py", "your_dependency_with_a_long_and_improbable_name.somefunction"): "a plugin template, never registered as a module",
    ("cellprofiler/modules/runimagejmacro.py", "os.startfile"): "Windows only",
    ("cellprofiler_core/utilities/appose.py", "appose"): "optional Appose bridge, imported only when a plugin asks for it",
    ("cellprofiler_core/utilities/measurement.py", "msvcrt"): "Windows only",
    ("cellprofiler_core/utilities/measurement.py", "os.O_BINARY"): "Windows only",
    ("cellprofiler_core/utilities/hdf5_dict.py", "h5py.phil"): "guarded by hasattr(h5py, 'phil')",
}


@dataclass
class Finding:
    file: str
    line: int
    kind: str  # 'missing-attribute' | 'missing-module' | 'unknown-keyword'
    name: str
    detail: str


_MISSING = object()


def resolve(dotted: str):
    """The object a dotted name refers to, importing submodules as Python would; _MISSING if absent."""
    parts = dotted.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return _MISSING
    path = parts[0]
    for part in parts[1:]:
        path = f"{path}.{part}"
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if inspect.ismodule(obj):
            try:
                obj = importlib.import_module(path)
                continue
            except ModuleNotFoundError:
                return _MISSING
            except Exception:  # noqa: BLE001
                return _MISSING
        return _MISSING
    return obj


def dotted_name(node: ast.AST) -> list[str] | None:
    """['np', 'ndarray', 'astype'] for np.ndarray.astype; None for anything not a plain name chain."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return list(reversed(parts))
    return None


class FileAudit(ast.NodeVisitor):
    def __init__(self, module_name: str, rel: str):
        self.module_name = module_name
        self.rel = rel
        self.aliases: dict[str, str] = {}
        self.findings: list[Finding] = []
        self.assigned: set[str] = set()

    # Imports -------------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root in SKIPPED_ROOTS:
                continue
            if resolve(alias.name) is _MISSING:
                self.add(node, "missing-module", alias.name, "import fails")
                continue
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                self.aliases[root] = root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self.module_name.rsplit(".", node.level)[0] if node.level else ""
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        if base.split(".")[0] in SKIPPED_ROOTS:
            return
        for alias in node.names:
            if alias.name == "*":
                continue
            full = f"{base}.{alias.name}"
            if resolve(full) is _MISSING:
                self.add(node, "missing-attribute", full, f"`from {base} import {alias.name}` fails")
                continue
            self.aliases[alias.asname or alias.name] = full

    # Names ---------------------------------------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    self.assigned.add(name.id)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.check_chain(node)
        # Inner attributes are covered by the outermost chain.
        inner = node.value
        while isinstance(inner, ast.Attribute):
            inner = inner.value
        self.generic_visit_outside_chain(inner)

    def generic_visit_outside_chain(self, node: ast.AST) -> None:
        if not isinstance(node, ast.Name):
            self.visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        parts = dotted_name(node.func)
        if parts and parts[0] in self.aliases and parts[0] not in self.assigned:
            target = resolve(".".join([self.aliases[parts[0]], *parts[1:]]))
            if target is not _MISSING and callable(target) and node.keywords:
                self.check_keywords(node, ".".join(parts), target)
        self.generic_visit(node)

    def check_chain(self, node: ast.Attribute) -> None:
        parts = dotted_name(node)
        if not parts or parts[0] not in self.aliases or parts[0] in self.assigned:
            return
        base = self.aliases[parts[0]]
        if base.split(".")[0] in SKIPPED_ROOTS:
            return
        # Walk outward: the first prefix that does not resolve is the missing name.
        for end in range(2, len(parts) + 1):
            full = ".".join([base, *parts[1:end]])
            obj = resolve(full)
            if obj is _MISSING:
                owner = resolve(".".join([base, *parts[1 : end - 1]]))
                # Attributes of instances and classes set at run time cannot be checked statically.
                if inspect.ismodule(owner):
                    self.add(node, "missing-attribute", full, f"`{'.'.join(parts)}` in the source")
                return
            if not (inspect.ismodule(obj) or inspect.isclass(obj)):
                return

    def check_keywords(self, node: ast.Call, written: str, target) -> None:
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return
        params = signature.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        for keyword in node.keywords:
            if keyword.arg is None:  # **kwargs at the call site
                continue
            if keyword.arg not in params:
                self.add(
                    node,
                    "unknown-keyword",
                    f"{written}({keyword.arg}=)",
                    f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', written)} has no parameter {keyword.arg!r}",
                )

    def add(self, node: ast.AST, kind: str, name: str, detail: str) -> None:
        self.findings.append(Finding(self.rel, getattr(node, "lineno", 0), kind, name, detail))


def audit(site_packages: Path) -> list[Finding]:
    findings: list[Finding] = []
    for package in PACKAGES:
        for file in sorted((site_packages / package).rglob("*.py")):
            rel = file.relative_to(site_packages)
            if any(part in EXCLUDED_PARTS for part in rel.parts):
                continue
            module_name = ".".join(rel.with_suffix("").parts)
            # `pkg/sub/__init__.py` stays `pkg.sub.__init__`, so that `from . import x` (one level
            # up from the module) lands on `pkg.sub` as it does for `pkg/sub/mod.py`.
            try:
                tree = ast.parse(file.read_text(encoding="utf-8-sig"), filename=str(file))
            except SyntaxError as err:
                findings.append(Finding(str(rel), err.lineno or 0, "syntax-error", str(rel), str(err)))
                continue
            visitor = FileAudit(module_name, str(rel))
            visitor.visit(tree)
            findings.extend(visitor.findings)
    return findings


def main() -> int:
    warnings.simplefilter("ignore")
    # Headless first: otherwise preferences reach for wx while modules are being loaded.
    from cellprofiler_core.preferences import set_headless

    set_headless()
    import cellprofiler  # noqa: F401 - locate site-packages from the installed package

    site_packages = Path(cellprofiler.__file__).resolve().parent.parent
    everything = audit(site_packages)
    findings = [f for f in everything if (f.file, f.name) not in NOT_APPLICABLE]
    if "--json" in sys.argv:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            print(f"{f.file}:{f.line}: {f.kind}: {f.name} ({f.detail})")
        print(
            f"{len(findings)} finding(s) in {', '.join(PACKAGES)}"
            f" ({len(everything) - len(findings)} more that cannot happen headless on Linux)"
        )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
