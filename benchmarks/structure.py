"""Structure numbers of the rlkit package (issue 19's before/after table), from the source alone (no imports).

    python benchmarks/structure.py [--json]

Prints: lines of ``rl_step``; fields of ``Session`` and of the updater (``Updater``, or the older ``UpdateContext``);
how many functions take the whole session (a parameter annotated ``Session``, in any module); import cycles of the
module graph (every ``import`` statement, lazy ones inside functions included); the longest functions; functions over
60 lines; plug-in files over 150 lines; how often ``pad_id`` is written.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlkit.import_graph import find_cycles, module_graph  # noqa: E402

PLUGIN_DIRS = ("advantages", "aggregation", "losses", "objectives", "samplers", "selection", "environments")


def _trees(package: Path) -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(package.rglob("*.py"))}


def _functions(trees: dict[Path, ast.Module]):
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def _fields(trees: dict[Path, ast.Module], name: str) -> int | None:
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == name:
                annotated = [s for s in node.body if isinstance(s, ast.AnnAssign)]
                if annotated:
                    return len(annotated)
                init = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
                return len({t.attr for s in ast.walk(init) if isinstance(s, ast.Assign) for t in s.targets
                            if isinstance(t, ast.Attribute)}) if init else 0
    return None


def measure(package: Path = ROOT / "rlkit") -> dict:
    trees = _trees(package)
    funcs = list(_functions(trees))
    length = {f"{p.relative_to(package.parent)}:{f.name}": f.end_lineno - f.lineno + 1 for p, f in funcs}
    takes_session = sorted(f"{p.relative_to(package.parent)}:{f.name}" for p, f in funcs
                           if any(isinstance(a.annotation, (ast.Name, ast.Constant))
                                  and getattr(a.annotation, "id", getattr(a.annotation, "value", None)) == "Session"
                                  for a in f.args.args))
    rl_step = next((n for k, n in length.items() if k.endswith("trainer.py:rl_step")), None)
    plugins = {str(p.relative_to(package.parent)): len(p.read_text().splitlines()) for p in trees
               if p.parent.name in PLUGIN_DIRS and p.name != "__init__.py"}
    longest = sorted(length.items(), key=lambda kv: -kv[1])[:5]
    return {"rl_step_lines": rl_step,
            "session_fields": _fields(trees, "Session"),
            "updater_fields": _fields(trees, "Updater") or _fields(trees, "UpdateContext"),
            "functions_taking_session": len(takes_session), "taking_session": takes_session,
            "import_cycles": [list(c) for c in find_cycles(module_graph(package))],
            "longest_functions": longest,
            "functions_over_60": sorted(k for k, n in length.items() if n > 60),
            "plugin_files_over_150": sorted(k for k, n in plugins.items() if n > 150),
            "pad_id_mentions": sum(p.read_text().count("pad_id") for p in trees)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    result = measure()
    if ap.parse_args().json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        if isinstance(value, list):
            print(f"{key} ({len(value)}):")
            for item in value:
                print(f"    {item}")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
