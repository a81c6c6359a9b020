"""Smoke test of `benchmarks/ablation.py`: it runs, its JSON has the promised keys, and our
sweep agrees with the timm pre-hook loop. Slow (two dozen timm passes), so marked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_ablation_benchmark_runs_and_agrees_with_timm():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "ablation.py"), "--images", "2",
         "--batch-size", "2", "--repeats", "1", "--json"],
        env=env, capture_output=True, text=True, timeout=900, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("ours_s", "baseline_s", "speedup", "max_abs_diff", "flops_fraction"):
        assert key in result, key
    assert result["max_abs_diff"] <= 1e-4
    assert result["max_log_prob_diff"] <= 1e-4
    assert result["reference_agrees"]
    assert result["ours_s"] > 0 and result["baseline_s"] > 0 and 0 < result["flops_fraction"]
