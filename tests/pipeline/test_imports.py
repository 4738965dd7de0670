"""pipeline/'s modules import one another without circles, and the parts the API and the
worker's parent process read (request limits, the engine contract) load no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the pipeline modules it imports anywhere in its text (at the top, inside
    functions, under TYPE_CHECKING). `from pkg import mod` counts as importing pkg.mod."""
    modules = {_module_name(p): p for p in (REPO / "pipeline").rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in modules]
                if len(targets) < len(subs):
                    targets.append(node.module)
            else:
                continue
            for target in targets:
                found = owner(target) if target.startswith("pipeline") else None
                # a package's __init__ is run by importing any module inside it: not an edge
                if found and found != module and not module.startswith(found + "."):
                    graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    graph = import_graph()
    assert "pipeline.stream" in graph["pipeline.generator"]  # the walk sees imports
    assert cycles(graph) == []


def test_the_walk_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_request_limits_and_the_engine_contract_load_no_torch():
    code = "import sys, pipeline.params, pipeline.engine; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def _heavy_after(code: str) -> list[str]:
    """The encoders' libraries a fresh interpreter has imported after running `code`."""
    probe = (
        code
        + "\nimport sys; print('heavy:' + ','.join(m for m in ('transformers', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("heavy:"), out.stdout
    return [m for m in line.removeprefix("heavy:").split(",") if m]


def test_the_dit_its_loader_and_the_worker_import_no_encoder_libraries():
    """transformers and diffusers take seconds to import (up to 13 s on a GPU host): the DiT's
    load starts without them, and neither the worker's job code nor a checkpoint's reader
    pulls them in before the engine is built."""
    assert _heavy_after("import pipeline.dit_loading, pipeline.weights.dit") == []
    assert _heavy_after("import pipeline.state, worker.lifecycle, worker.engine") == []
    assert _heavy_after("from pipeline.weights import CheckpointError, Placement") == []
    assert _heavy_after("from pipeline.weights import verify") == ["transformers"]  # lazily


def test_the_worker_starts_its_dit_load_before_importing_the_encoder_libraries():
    code = """
import json, sys
import pipeline.dit_loading as dl
seen = []
start = dl.DeferredDit._start
def spy(self):
    seen.append([m for m in ('transformers', 'diffusers') if m in sys.modules])
    return start(self)
dl.DeferredDit._start = spy
from worker.config import EngineSpec
from worker.engine import build_engine
engine = build_engine(EngineSpec(preset='tiny', device='cpu', torch_threads=1))
engine.components.wait_dit()
print(json.dumps(seen))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[[]]"  # one load, started before them


def test_no_lazy_export_shares_its_name_with_a_submodule():
    """Importing a submodule sets the package's attribute of its name, which would then hide
    a lazily exported function of the same name (`from pipeline.weights import verify`)."""
    import pipeline
    import pipeline.weights

    for package in (pipeline, pipeline.weights):
        folder = Path(package.__file__).parent
        for name in package._EXPORTS:
            assert not (folder / f"{name}.py").exists(), f"{package.__name__}.{name}"
            assert not (folder / name).is_dir(), f"{package.__name__}.{name}"
