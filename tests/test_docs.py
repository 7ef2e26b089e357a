"""The documentation site (mkdocs.yml, docs/): complete, linked, and in step with the code.

The fast tests check what a reader relies on without building the site: every shipped recipe
and every registered part is documented, every package has an API page, the benchmark page
carries the README's measured tables, and every link between pages resolves. The slow test
builds the site with ``mkdocs build --strict`` (about 35 s on the 2-core CI machine), which also
checks the docstrings rendered by mkdocstrings and the anchors; CI runs that build as its own step.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
HOOK = DOCS / "hooks" / "rsfm_docs.py"


@pytest.fixture(scope="module")
def hook():
    """The build hook, imported from its file (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("rsfm_docs_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def hand_written_pages() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md")}


def test_every_shipped_recipe_is_in_the_recipe_reference() -> None:
    reference = (DOCS / "recipes.md").read_text(encoding="utf-8")
    recipes = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*") if p.is_file())
    assert len(recipes) >= 18, recipes
    missing = [r for r in recipes if f"`{r}`" not in reference]
    assert not missing, f"docs/recipes.md does not list {missing}"
    # and the reference names no recipe that does not exist
    named = set(re.findall(r"`(configs/[^`]+\.(?:yaml|sh))`", reference))
    assert named <= set(recipes), f"docs/recipes.md names missing files: {sorted(named - set(recipes))}"


def test_every_registered_part_is_listed_and_linked_to_its_api_entry(hook) -> None:
    from rsfm.utils.registry import REGISTRIES

    tables = hook.registries_markdown()
    for kind, registry in REGISTRIES.items():
        assert f"### {kind.capitalize()}" in tables
        for name, path, _ in registry.describe():
            assert f"| [`{name}`][{path}] |" in tables, f"{kind}: {name} missing from the registry tables"
    assert hook.REGISTRIES_MARKER in (DOCS / "recipes.md").read_text(encoding="utf-8")


def test_methods_heads_and_datasets_are_described_on_the_hand_written_pages() -> None:
    from rsfm.utils.registry import DATASETS, HEADS, METHODS

    pages = hand_written_pages()
    method_pages = {p.stem.replace("-", "") for p in (DOCS / "methods").glob("*.md")}
    assert {n.lower() for n in METHODS.names()} <= method_pages, (method_pages, METHODS.names())
    prose = "\n".join(text for path, text in pages.items() if path.name != "recipes.md")
    for registry in (HEADS, DATASETS):
        missing = [n for n in registry.names() if f"`{n}`" not in prose]
        assert not missing, f"{registry.kind} without a word on a task or method page: {missing}"


def test_every_package_gets_an_api_page_with_every_module(hook) -> None:
    pages = hook.api_pages()
    text = "\n".join(pages.values())
    src = REPO / "src"
    for path in sorted((src / "rsfm").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module in hook.SKIP_MODULES:
            assert f"::: {module}\n" not in text
            continue
        assert f"::: {module}\n" in text, f"{module} has no API entry"
    assert "api/rsfm.data.segmentation.md" in pages and "api/rsfm.md" in pages
    # a package page documents the package, not again the members it re-exports
    assert "::: rsfm.data\n    options:\n      members: false" in pages["api/rsfm.data.md"]


def test_the_benchmark_page_carries_the_readme_tables_and_commands(hook) -> None:
    section = hook.readme_section("Benchmarks")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    body = readme.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    assert len(rows) > 40
    assert all(row in section for row in rows)  # every measured figure, unchanged
    assert "benchmarks/throughput.py" in section
    # sub-headings raised one level, under the page's own title
    assert "\n## Measured on a GPU" in section and "\n### Curation and loading" in section
    assert "\n#### " not in section
    assert "<!-- rsfm:readme Benchmarks -->" in (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="no section '## Nope'"):
        hook.readme_section("Nope")


def test_nav_and_links_between_pages_resolve(hook) -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["strict"] is True and config["site_dir"] == "site"
    assert all(v == "warn" for v in config["validation"].values())
    nav = nav_pages(config["nav"])
    for page in nav:
        assert (DOCS / page).is_file(), f"mkdocs.yml nav names {page}, which does not exist"
    pages = hand_written_pages()
    generated = {(DOCS / p).resolve() for p in hook.api_pages()}
    in_nav = {DOCS / p for p in nav}
    assert not [p for p in pages if p not in in_nav and "hooks" not in p.parts], "a page is not in the nav"
    for path, text in pages.items():
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+?\.md)(?:#[^)]*)?\)", text):
            resolved = (path.parent / target).resolve()
            assert resolved.is_file() or resolved in generated, f"{path.relative_to(REPO)} links to {target}"


def test_method_pages_cite_their_papers() -> None:
    arxiv = {
        "selective-mae.md": "2406.11933",
        "mae.md": "2111.06377",
        "gersp.md": "2401.04614",
        "mtp.md": "2403.13430",
    }
    for page, number in arxiv.items():
        text = (DOCS / "methods" / page).read_text(encoding="utf-8")
        assert f"arxiv.org/abs/{number}" in text, page
        assert "## Where rsfm differs" in text, page
    assert "arxiv.org/abs/2208.03987" in (DOCS / "methods" / "mtp.md").read_text(encoding="utf-8")  # RVSA


def test_sphinx_roles_in_docstrings_render_as_code(hook) -> None:
    html = "see :class:<code>~rsfm.data.folder.LabeledImageFolder</code> and :func:<code>rsfm.ops.obb.flip</code>"
    assert hook.strip_sphinx_roles(html) == "see <code>LabeledImageFolder</code> and <code>rsfm.ops.obb.flip</code>"
    assert hook.strip_sphinx_roles("<p>.. versionadded:: 0.2</p>") == "<p><em>New in version 0.2.</em> </p>"
    changed = hook.strip_sphinx_roles("<p>.. versionchanged:: 0.3\n    Shards.</p>")
    assert changed == "<p><em>Changed in version 0.3:</em> Shards.</p>"


def test_version_directives_name_a_release_that_exists() -> None:
    """A ``versionadded``/``versionchanged`` later than the package's version is a typo that tells
    users a feature is not in the release they run (MTP said 0.4 while it shipped in 0.3)."""
    import rsfm

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    current = key(rsfm.__version__)
    directive = re.compile(r"\.\. version(?:added|changed):: (\S+)")
    found, ahead = 0, []
    for path in sorted((REPO / "src" / "rsfm").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for version in directive.findall(line):
                found += 1
                assert re.fullmatch(r"\d+(\.\d+)+", version), f"{path}:{number}: {version!r}"
                if key(version) > current:
                    ahead.append(f"{path.relative_to(REPO)}:{number}: {version}")
    assert found > 100, found
    assert not ahead, f"directives ahead of rsfm {rsfm.__version__}: {ahead}"


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: no warning from links, anchors, nav or docstrings (about 35 s)."""
    pytest.importorskip("mkdocstrings")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is not installed"
    site = tmp_path / "site"
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WARNING" not in done.stderr, done.stderr[-4000:]
    assert (site / "index.html").is_file() and (site / "api" / "rsfm.data" / "index.html").is_file()
    recipes = (site / "recipes" / "index.html").read_text(encoding="utf-8")
    assert 'href="../api/rsfm.models.encoders/#rsfm.models.encoders.vit.ViT"' in recipes
    api = (site / "api" / "rsfm.data" / "index.html").read_text(encoding="utf-8")
    assert ":class:<code>" not in api and ".. versionadded::" not in api
