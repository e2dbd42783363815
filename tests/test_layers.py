"""The layers: `akd_base` imports nothing of the project's above it, and `devices/` and
`latency_db/` import nothing from `akd_mobile` (nor torch) when they load."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(ROOT / package)])]


def _loaded_after_importing(modules: list[str]) -> list[str]:
    code = (f"import importlib, json, sys; sys.path.insert(0, {str(ROOT)!r})\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("package, forbidden", [
    ("akd_base", ("akd_mobile", "devices", "latency_db", "torch")),
    ("devices", ("akd_mobile", "torch")),
    ("latency_db", ("akd_mobile", "devices", "torch")),
])
def test_a_lower_layer_loads_nothing_from_the_layers_above(package, forbidden):
    modules = _modules(package)
    assert len(modules) > 2
    loaded = _loaded_after_importing(modules)
    above = [m for m in loaded if m.split(".")[0] in forbidden]
    assert above == [], f"importing {package} loaded {above}"
