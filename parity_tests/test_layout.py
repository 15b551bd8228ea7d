"""The package's shape: no import cycles, no process tuning, no torch / training stack at import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "vitjax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """vitjax modules a file imports at module level (function-level imports are lazy)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vitjax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitjax"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_no_import_cycles_in_the_package():
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {i for i in _top_level_imports(p) if i in modules and i != m}
             for m, p in modules.items()}  # fmt: skip
    # a package's __init__ importing its own submodules is not a cycle through them
    for m in graph:
        graph[m] = {i for i in graph[m] if not (modules[m].name == "__init__" and
                                                i.startswith(m + "."))}  # fmt: skip
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_library_changes_no_process_state_and_imports_no_tooling():
    bad = re.compile(
        r"mallopt|\bctypes\b|jax_num_cpu_devices|xla_force_host_platform|"
        r"^\s*(from|import) (vittorch|devtools)\b|os\.environ\[[^]]+\]\s*="
    )
    hits = []
    for path in PKG.rglob("*.py"):
        if path.parent.name == "cli":  # entry points may tune the process, behind flags
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if bad.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_import_and_inference_need_neither_torch_nor_the_training_stack(tmp_path):
    """Nor does saving in timm's hub layout (its config.json names a timm architecture)."""
    code = (
        "import sys, numpy as np, vitjax\n"
        "m, v = vitjax.create_model('vit_tutorial_patch16_32', depth=1)\n"
        "m.apply(v, np.zeros((1, 32, 32, 3), np.float32))\n"
        "m, v = vitjax.create_model('vit_tiny_patch16_224', depth=1, num_classes=2)\n"
        f"vitjax.save_pretrained({str(tmp_path / 'm')!r}, m, v)\n"
        "heavy = ('torch', 'timm', 'grain', 'orbax', 'optax', 'tqdm', 'matplotlib', 'sklearn')\n"
        "print(sorted(h for h in heavy if h in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert '"architecture"' in (tmp_path / "m" / "config.json").read_text()
