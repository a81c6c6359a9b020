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


def _architecture_generator():
    spec = importlib.util.spec_from_file_location("make_architecture", DOCS / "make_architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_architecture_names_every_module_and_only_modules_that_exist():
    root = DOCS.parent
    text = (DOCS / "architecture.md").read_text()
    listed = set(re.findall(r"^\s*- `([\w/]+\.py)`:", text, re.M))
    # A bare name under a folder's paragraph is relative to it ("model.py" is vit_jax_va/model.py).
    paths = {name if "/" in name and name.split("/")[0] in ("converters", "explorer") else f"vit_jax_va/{name}"
             for name in listed}
    modules = {p.relative_to(root).as_posix() for folder in ("vit_jax_va", "converters", "explorer")
               for p in (root / folder).rglob("*.py")
               if p.name != "__init__.py" or p.parent.name == "demo"}
    assert sorted(modules - paths) == [], "modules missing from docs/architecture.md"
    assert sorted(paths - modules) == [], "docs/architecture.md names modules that do not exist"


def test_architecture_picture_is_current(tmp_path):
    generator = _architecture_generator()
    assert generator.main(["--check"]) == 0, "docs/architecture.svg is stale: run python docs/make_architecture.py"
    stale = tmp_path / "architecture.svg"
    stale.write_text("<svg/>")
    assert generator.main(["--check", "--output", str(stale)]) == 1
