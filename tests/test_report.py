"""`vit-va report`: its command line and its refusals (the report itself is opened in Chromium in
tests/test_explorer_browser.py)."""

import subprocess
import sys

import pytest

from tests.explorer_runs import REPO, demo_runs_dir


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "report", *args], cwd=REPO,
                          capture_output=True, text=True)


def test_the_report_command_is_listed():
    result = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert "report" in result.stdout


def test_a_report_that_is_not_html_is_refused_and_nothing_is_written(tmp_path_factory, tmp_path):
    run = demo_runs_dir(tmp_path_factory.getbasetemp()) / "demo"
    result = _report(str(run), "--out", str(tmp_path / "report.png"))
    assert result.returncode != 0
    assert "report.png does not end in .html" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_is_not_a_run_is_named(tmp_path):
    result = _report(str(tmp_path / "nothing"), "--out", str(tmp_path / "report.html"))
    assert result.returncode != 0
    assert "nothing" in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_top_must_be_positive(tmp_path_factory, tmp_path):
    run = demo_runs_dir(tmp_path_factory.getbasetemp()) / "demo"
    result = _report(str(run), "--out", str(tmp_path / "report.html"), "--top", "0")
    assert result.returncode != 0
    assert "top must be at least 1" in result.stderr
    with pytest.raises(FileNotFoundError):
        (tmp_path / "report.html").stat()
