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
