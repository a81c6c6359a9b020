"""The core library and the converters import no torch/timm/UI libraries at import time."""

import subprocess
import sys

HEAVY = ("torch", "timm", "transformers", "panel", "param", "bokeh", "holoviews")


def _imported_after(statement):
    code = (f"import sys; {statement}; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_core_pulls_in_no_torch_timm_or_ui():
    assert _imported_after("import vit_jax_va, vit_jax_va.cli") == []


def test_converters_import_torch_only_when_used():
    assert _imported_after("import converters") == []


def test_the_check_itself_can_fail():
    assert _imported_after("import vit_jax_va, torch") == ["torch"]


def test_the_command_line_with_the_explorers_subcommand_pulls_in_no_ui():
    # `vit-va explore` comes from the explorer's entry point; adding it loads no UI library.
    assert _imported_after("from vit_jax_va.cli import build_parser; build_parser()") == []


def test_no_core_module_imports_the_explorer_torch_timm_or_a_ui_library():
    """Static: not even a lazy import inside a function (those the import checks above miss)."""
    import re
    from pathlib import Path

    core = Path(__file__).resolve().parents[1] / "vit_jax_va"
    pattern = re.compile(r"^\s*(import|from)\s+(explorer|torch|timm|transformers|onnx|onnxruntime|"
                         r"panel|param|bokeh|holoviews)\b", re.M)
    found = [f"{p.relative_to(core.parent)}: {m.group(0).strip()}" for p in sorted(core.rglob("*.py"))
             for m in pattern.finditer(p.read_text())]
    assert found == []


def _module_names(package: str) -> list[str]:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return sorted(".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                  for p in (root / package).rglob("*.py"))


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the package modules it imports when it is imported (module-level statements,
    `if TYPE_CHECKING:` blocks left out); `from pkg import name` counts as an import of the
    submodule `pkg.name` when there is one."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = set(_module_names(package))
    graph = {}
    for name in modules:
        path = root / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        edges = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                          else node.module for a in node.names}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of `graph` (its modules in order), or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_no_import_circle_in_the_packages():
    for package in ("vit_jax_va", "converters", "explorer"):
        assert _cycle(_import_graph(package)) == [], package


def test_the_circle_check_can_fail():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_every_core_module_imports_alone_in_a_fresh_interpreter():
    """An import circle that the order of imports hides shows when a module comes first."""
    from concurrent.futures import ThreadPoolExecutor

    def alone(module):
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        return module, result.returncode, result.stderr[-400:]

    modules = _module_names("vit_jax_va") + _module_names("converters")
    with ThreadPoolExecutor(4) as pool:
        failed = [(m, err) for m, code, err in pool.map(alone, modules) if code != 0]
    assert failed == []


def test_importing_the_explorer_loads_no_plotting_backend():
    """`hv.extension` runs when the first view is built (or the app), not at import."""
    code = ("import explorer.app, explorer.views, holoviews as hv; print(sorted(hv.Store.renderers)); "
            "explorer.views.glyphs.use_bokeh(); print(sorted(hv.Store.renderers))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    after_import, after_first_view = result.stdout.split("\n")[:2]
    assert after_import == "[]" and "bokeh" in after_first_view
