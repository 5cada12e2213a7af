"""The architecture as a contract: which layer may import which, no import cycles, and a light `import logbook`.

Data flows one way: trainer -> event logs (logbook.record) -> store (logbook.store, the only SQL)
-> analysis (pure) -> report (store + analysis) -> present (what people see) -> pages and exports.
Each layer may import only the layers before it; docs/architecture.md draws the same table. Every
import is read from the source with `ast`, including imports inside functions, so a lazy import
cannot hide a forbidden edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("logbook", "app", "trainer", "midflight")  # folders at the repository's top; all import as midflight.*
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# layer -> (the project layers it may import, the third-party packages it may import; None = any but BANNED)
ALL_LOGBOOK = {
    *("values", "roles", "record", "store", "analysis", "report", "present", "oncall", "importers", "exporters"),
    "logbook",
}
RULES: dict[str, tuple[set[str], set[str] | None]] = {
    "values": (set(), set()),  # the standard library only
    "roles": (set(), set()),  # the metric-role vocabulary every layer shares: the standard library only
    "record": ({"values", "roles"}, {"orjson"}),  # what a training process loads: stdlib + orjson
    "store": ({"values", "roles", "record"}, None),
    "analysis": ({"values", "roles"}, {"numpy", "pandas"}),  # pure: no database, no figures
    "report": ({"values", "roles", "record", "store", "analysis"}, {"numpy", "pandas"}),
    "present": ({"values", "roles", "analysis"}, {"numpy", "pandas", "plotly"}),
    # on call (issue 18: alerts, channels, the watcher, the autopilot): reads runs like the dashboard, acts
    # through record.interventions, talks out with the stdlib only
    "oncall": ({"values", "roles", "record", "store", "analysis", "report", "present", "oncall"}, {"numpy", "pandas"}),
    "importers": ({"values", "roles", "record"}, None),  # other trainers' logs in, midflight's logs out
    "exporters": ({"values", "roles", "record", "store", "analysis", "report", "present"}, None),
    "logbook": (ALL_LOGBOOK, None),  # logbook/__init__.py, __main__.py, cli.py: the front door
    "trainer": ({"trainer", "roles", "record", "logbook"}, None),  # the Recorder API only
    "app": (ALL_LOGBOOK | {"app", "pages"}, None),
    "pages": ({"app", "values", "roles", "analysis", "report", "present", "exporters"}, None),  # no store, no SQL
    # inside someone else's training loop (Hugging Face, Lightning, Accelerate, W&B-style code): the Recorder only
    "integrations": ({"values", "roles", "record", "logbook", "integrations", "midflight"}, None),
    "midflight": (ALL_LOGBOOK | {"app", "trainer", "integrations", "midflight"}, None),  # the namespace and command
}
# never, anywhere in the layer (besides what the allow-lists above already exclude)
BANNED = {
    "store": {"plotly", "streamlit", "torch", "matplotlib"},
    "importers": {"duckdb", "plotly", "streamlit", "torch"},
    "exporters": {"streamlit", "torch"},
    "oncall": {"streamlit", "torch", "requests", "httpx", "aiohttp"},
    "logbook": {"streamlit", "torch"},
    "trainer": {"duckdb", "streamlit", "plotly", "pandas", "pyarrow"},
    "app": {"torch"},
    "pages": {"duckdb", "pyarrow"},
    "integrations": {"duckdb", "streamlit", "plotly", "pandas", "pyarrow"},
}


# Distributed engines read the sealed Parquet from outside (examples/fleet_query.py, tests): no layer depends
# on one, so midflight runs without them and the Parquet layout, not an engine's API, is the interface.
ENGINES = {"dask", "pyspark", "daft", "ray"}


def layer_of(module: str) -> str | None:
    """The layer of a project module (dotted name), or None for a third-party or stdlib module."""
    parts = module.split(".")
    if parts[0] != "midflight":
        return None
    parts = parts[1:]
    if not parts or parts[0] in ("__main__",):
        return "midflight"
    if parts[0] in ("integrations", "wandb"):
        return "integrations"
    if parts[0] == "trainer":
        return "trainer"
    if parts[0] == "app":
        return "pages" if len(parts) > 1 and parts[1] == "app_pages" else "app"
    if parts[0] != "logbook":
        return None
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return "logbook"
    return parts[1] if parts[1] in RULES else "logbook"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] != "midflight":
        parts.insert(0, "midflight")  # logbook/, app/, trainer/ import as midflight.logbook, ...
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the source, relative ones resolved. `from a import b`
    yields a.b when b is one of the `known` modules, else a (b is a name defined in a)."""
    out = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in known else base) for a in node.names]
    return out


def project_modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[module_name(path)] = path
    return found


def violations(module: str, source: str, is_package: bool, known: set[str]) -> list[str]:
    """Every import of `module` that its layer's rule forbids, as 'module:line imports x (why)'."""
    layer = layer_of(module)
    if layer is None:
        return []
    may, third_ok = RULES[layer]
    banned = BANNED.get(layer, set()) | ENGINES
    out = []
    for line, target in imports(source, module, is_package, known):
        root = target.split(".")[0]
        if root in PACKAGES[:3]:
            out.append(f"{module}:{line} imports {target} (import it as midflight.{target})")
        elif root == "midflight":
            other = layer_of(target)
            if other != layer and other not in may:
                out.append(f"{module}:{line} imports {target} (layer {layer} may not import layer {other})")
        elif root in banned or (root not in STDLIB and third_ok is not None and root not in third_ok):
            out.append(f"{module}:{line} imports {target} (third-party {root!r} is not allowed in layer {layer})")
    return out


def test_every_import_follows_the_layer_rules():
    mods = project_modules()
    known = set(mods)
    found = []
    for mod, path in mods.items():
        found += violations(mod, path.read_text(), path.name == "__init__.py", known)
    assert not found, "layer rules broken:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "module, source",
    [
        ("midflight.logbook.analysis.energy", "import duckdb"),
        ("midflight.logbook.analysis.energy", "from midflight.logbook.store import queries"),
        ("midflight.logbook.record.recorder", "import numpy as np"),
        (
            "midflight.logbook.record.recorder",
            "def f():\n    from midflight.logbook.store.ingest import ingest",
        ),  # a lazy import too
        ("midflight.logbook.store.queries", "from ..report import summary"),  # a relative import too
        ("midflight.logbook.present.figures", "import streamlit as st"),
        ("midflight.logbook.report.summary", "from midflight.logbook.present.text import num"),
        ("midflight.trainer.trainer", "from midflight.logbook.store import open_store"),
        ("midflight.app.app_pages.live", "from midflight.logbook.store import queries"),
        ("midflight.logbook.cli", "import streamlit"),
        ("midflight.logbook.store.sealed", "import dask.dataframe as dd"),
        ("midflight.logbook.report.summary", "from logbook import init"),  # the bare name is PyPI's Logbook
        ("midflight.integrations.transformers", "from midflight.logbook.store import queries"),
        ("midflight.integrations.lightning", "import pandas"),  # engines read the Parquet from outside
        ("midflight.logbook.exporters.parquet", "def f():\n    import pyspark"),
        ("midflight.logbook.oncall.channels", "import requests"),  # stdlib networking only
        ("midflight.logbook.oncall.watch", "from midflight.logbook.exporters import markdown"),
    ],
)
def test_the_rules_catch_a_forbidden_import(module, source):
    assert violations(module, source, False, set(project_modules())), f"{module}: {source!r} was allowed"


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import between project modules, lazy ones included."""
    mods = project_modules()
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        for _, target in imports(path.read_text(), mod, path.name == "__init__.py", set(mods)):
            if target in mods and target != mod:
                graph[mod].add(target)
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in graph:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)  # the rest of the session keeps the default (a JSON parser relies on it)
    assert not cycles, f"import cycles: {cycles}"


def test_import_midflight_loads_the_write_side_only():
    """A training process pays for the Recorder, not for the store, analyses or UI."""
    code = (
        "import sys, midflight, midflight.logbook as logbook\n"
        "heavy = ('duckdb', 'pandas', 'numpy', 'torch', 'streamlit', 'plotly', 'pyarrow')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(','.join(heavy))\n"
        "assert logbook.queries.series and logbook.report and logbook.present  # the other layers load on first use\n"
        "print('duckdb' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    heavy, then = out.splitlines()
    assert heavy == "" and then == "True"
