"""docs/: the CLI reference matches the CLI, and every relative link points at a file."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))

# [text](target) or [text](target "title"); images too.
_LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _generator():
    spec = importlib.util.spec_from_file_location("make_cli_reference",
                                                  DOCS / "make_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _link_targets(markdown: str) -> list[str]:
    """Link targets outside code (fenced blocks and inline code hold no links)."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return _LINK.findall(text)


def test_cli_reference_is_current():
    expected = _generator().render()
    assert (DOCS / "cli.md").read_text() == expected, (
        "docs/cli.md is stale: run python docs/make_cli_reference.py")


def test_cli_reference_covers_every_subcommand():
    generator = _generator()
    from vit_jax_va.cli import build_parser

    text = (DOCS / "cli.md").read_text()
    for name in generator._subcommands(build_parser()):
        assert f"## `vit-va {name}`" in text


def test_check_fails_on_a_stale_file_and_names_it(tmp_path, capsys):
    generator = _generator()
    page = tmp_path / "cli.md"
    page.write_text("# CLI reference\n\nout of date\n")
    assert generator.main(["--check", "--output", str(page)]) == 1
    err = capsys.readouterr().err
    assert "stale" in err and page.name in err
    assert generator.main(["--output", str(page)]) == 0
    assert generator.main(["--check", "--output", str(page)]) == 0


def test_link_finder_sees_links_and_skips_code():
    text = 'See [a](a.md), [b](../b.py#L3 "t") and `[c](c.md)`.\n```\n[d](d.md)\n```\n'
    assert _link_targets(text) == ["a.md", "../b.py#L3"]


def test_index_links_every_page():
    index = _link_targets((DOCS / "README.md").read_text())
    linked = {target.split("#", 1)[0] for target in index}
    assert {p.name for p in PAGES} - {"README.md"} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_at_existing_files(page):
    broken = []
    for target in _link_targets(page.read_text()):
        if _EXTERNAL.match(target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{page.name} links to missing files: {broken}"
