"""The core library and the converters import no torch/timm/UI libraries at import time."""

import subprocess
import sys

HEAVY = ("torch", "timm", "panel", "param", "bokeh", "holoviews")


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
