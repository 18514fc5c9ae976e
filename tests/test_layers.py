"""The layer map of DESIGN.md, checked on the source: no import arrow points up, and no module
(but the kernels) grows past 450 lines."""
from __future__ import annotations

import ast
import os

import pytest

SRC = os.path.join(os.path.dirname(__file__), "..", "src")

# lower numbers sit lower; a module may import only from its own layer or below
LAYERS = {
    "attend._rules": 0, "attend._check": 0, "attend._io": 0, "attend._atomic": 0, "attend._safetensors": 0,
    "attend._jsondoc": 0, "attend._ruletree": 0, "attend._rule_prep": 0,
    "attend.backends": 1,
    "attend.scores": 2, "attend.masks": 2, "attend.mods": 2,
    "attend.functional": 3, "attend._nonfinite": 3,
    "attend.nn": 4, "attend.viz": 4, "attend.data": 4, "attend.distributed": 4,
    "attend.models": 5,
    "attend.apps": 6, "attend.integrations": 6, "attend.train": 6, "attend.hf": 6, "attend.runs": 6,
    "attend.demo": 6, "attend.tour": 6,
    "attend.cli": 7,
}
# arrows forbidden even where the layers would allow them
FORBIDDEN = [("attend.viz", "attend.models"), ("attend.backends", "attend.nn"), ("attend.backends", "attend.models")]
LONG_OK = {"attend.backends.triton.kernels"}  # the Triton kernels: one file by design


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(os.path.join(SRC, "attend")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
                found[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return found


MODULES = _modules()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _layer(name: str):
    best = max((p for p in LAYERS if _under(name, p)), key=len, default=None)
    return None if best is None else LAYERS[best]


def _imports(name: str) -> set[str]:
    """The attend modules ``name`` imports (anywhere in the file, deferred imports included)."""
    path = MODULES[name]
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(x for x in (base, node.module or "") if x)
            if node.module:
                out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES}
    return {m for m in out if _under(m, "attend") and m != "attend"}


def _violations(name: str, targets) -> list[str]:
    here = _layer(name)
    if here is None:
        return [f"{name} is not on the layer map (add it to LAYERS)"]
    found = []
    for target in sorted(targets):
        there = _layer(target)
        if there is None:
            found.append(f"{name} imports {target}, which is not on the layer map")
        elif there > here:
            found.append(f"{name} (layer {here}) imports {target} (layer {there}): an arrow pointing up")
        found += [f"{name} must not import {target}" for low, high in FORBIDDEN
                  if _under(name, low) and _under(target, high)]
    return found


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "attend"))
def test_no_import_points_up(name):
    assert not _violations(name, _imports(name))


def test_no_module_is_over_450_lines():
    long = {name: n for name, path in MODULES.items()
            if name not in LONG_OK and (n := sum(1 for _ in open(path, encoding="utf-8"))) > 450}
    assert not long, f"modules over 450 lines: {long}"


def test_the_checker_sees_upward_and_forbidden_arrows():
    assert {"attend.backends.base", "attend._rules"} <= _imports("attend.backends.triton.plan")  # relative imports
    assert _violations("attend.backends.eager", ["attend.functional"])  # up
    assert _violations("attend.backends.eager", ["attend.nn.multihead"])  # backends never import nn
    assert _violations("attend.masks", ["attend.nowhere"])  # not on the map
    assert not _violations("attend.nn.multihead", ["attend.functional", "attend._rules"])


def test_old_module_names_still_import():
    """Modules moved in issue 15 stay importable by their old names (the same module objects)."""
    import importlib

    for old, new in (("attend.runs", "attend.apps.translate.run"), ("attend.demo", "attend.apps.demo"),
                     ("attend.tour", "attend.apps.tour"), ("attend.hf", "attend.integrations.hf")):
        assert importlib.import_module(old) is importlib.import_module(new), old
    from attend.apps import translate
    from attend.apps.translator import Translator, evaluate, train_translator
    from attend.train import TrainConfig, Trainer
    assert (Translator, evaluate, train_translator, Trainer, TrainConfig) == (
        translate.Translator, translate.evaluate, translate.train_translator, translate.Trainer, translate.TrainConfig)
