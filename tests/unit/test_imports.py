"""rlkit.import_graph, and the package's import structure: no cycles, and every module imports in any order."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.import_graph import find_cycles, module_graph, module_name

PACKAGE = Path(__file__).resolve().parents[2] / "rlkit"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_module_graph_counts_lazy_imports_and_parent_packages(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nfrom pkg.sub.c import f\n",             # runs pkg.sub first, then pkg.sub.c
        "pkg/b.py": "def g():\n    from pkg import a\n",                  # lazy, `from package import submodule`
        "pkg/sub/__init__.py": "from pkg.sub import c\n",                   # own submodule: no edge to itself
        "pkg/sub/c.py": "from pkg.sub import helper\n",                    # a name defined in its package
        "pkg/sub/helper.py": "X = 1\n",
    })
    graph = module_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.sub", "pkg.sub.c"}, "pkg.b": {"pkg.a"},
                     "pkg.sub": {"pkg.sub.c"}, "pkg.sub.c": {"pkg.sub.helper"}, "pkg.sub.helper": set()}
    assert module_name(pkg / "sub" / "__init__.py", pkg) == "pkg.sub"
    assert find_cycles(graph) == []


def test_find_cycles_reports_each_strongly_connected_set_once(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from pkg.x import X\n",
        "pkg/x.py": "from pkg import helper\nX = 1\n",                   # pkg -> pkg.x -> pkg (reads pkg's names?)
        "pkg/helper.py": "def h():\n    import pkg.y\n",                  # a lazy import closes a second cycle
        "pkg/y.py": "from pkg.helper import h\n",
    })
    graph = module_graph(pkg)
    assert graph["pkg.x"] == {"pkg.helper"}          # `from pkg import helper`: the submodule only
    assert find_cycles(graph) == [("pkg.helper", "pkg.y")]
    graph["pkg.y"].add("pkg")                          # pkg -> x -> helper -> y -> pkg: one set of four
    assert find_cycles(graph) == [("pkg", "pkg.helper", "pkg.x", "pkg.y")]


def test_rlkit_has_no_import_cycles():
    cycles = find_cycles(module_graph(PACKAGE))
    assert cycles == [], f"import cycles (each a set of modules that import each other): {cycles}"


def _all_modules() -> list[str]:
    return sorted(module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("order_seed", [0, 1])
def test_every_module_imports_in_a_fresh_interpreter_in_random_order(order_seed):
    modules = _all_modules()
    random.Random(order_seed).shuffle(modules)
    code = ("import importlib, json, sys\n"
            "for name in json.loads(sys.argv[1]):\n"
            "    importlib.import_module(name)\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(modules)], capture_output=True, text=True,
                          cwd=PACKAGE.parent, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, f"import order (seed {order_seed}) {modules} failed:\n{proc.stderr[-3000:]}"
