"""MkDocs hook: the API reference pages and the tables of registered names, made at build time.

* ``on_files`` adds one page per package of ``src/rsfm`` (``api/<package>.md``): the package's
  docstring, then every module of the package rendered by mkdocstrings (``::: rsfm.x.y``). A new
  module is documented, and its docstrings checked, by the next ``mkdocs build --strict``.
* ``on_config`` appends those pages to the navigation under "API reference".
* ``on_page_markdown`` replaces ``<!-- rsfm:registries -->`` with the tables of registered
  encoders, necks, heads, methods and datasets (what ``rsfm list`` prints), each name linked to
  its API entry, and ``<!-- rsfm:readme Title -->`` with the README's section ``## Title``
  (its sub-headings raised one level), so that measured figures are written in one place only.
* ``on_page_content`` turns the Sphinx roles of the docstrings (``:class:`~rsfm.x.Y```), which
  mkdocstrings leaves as text, into plain code (``Y``, the full path without ``~``), and their
  ``.. versionadded::`` / ``.. versionchanged::`` lines into "New in version" / "Changed in version".

The functions :func:`api_pages`, :func:`registries_markdown` and :func:`readme_section` are
also used by ``tests/test_docs.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
#: Modules left out of the API reference: the command line (documented by ``rsfm --help``).
SKIP_MODULES = {"rsfm.cli", "rsfm.__main__"}
REGISTRIES_MARKER = "<!-- rsfm:registries -->"
#: A Sphinx role left in a rendered docstring: ``:class:`~a.b.C``` becomes ``<code>:class:</code>...``.
SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):<code>(~?)([^<]+)</code>")
#: A Sphinx version directive left in a rendered docstring (``.. versionadded:: 0.2``).
SPHINX_VERSION = re.compile(r"\.\. version(added|changed):: ([\w.]+)\s*")
README_MARKER = re.compile(r"<!-- rsfm:readme (?P<title>[^>]+?) -->")
API_SECTION = "API reference"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def api_pages(src: Path = SRC) -> dict[str, str]:
    """Page path (``api/rsfm.data.md``) → markdown, one page per package under ``src/rsfm``.

    A package's page holds its own docstring (without the members it re-exports, which are
    documented where they are defined) and then each of its plain modules, in name order.
    Sub-packages get their own pages.
    """
    pages: dict[str, str] = {}
    for init in sorted((src / "rsfm").rglob("__init__.py")):
        package = _module_name(init)
        modules = sorted(
            _module_name(p)
            for p in init.parent.glob("*.py")
            if p.name != "__init__.py" and _module_name(p) not in SKIP_MODULES
        )
        lines = [
            f"# `{package}`",
            "",
            f"::: {package}",
            "    options:",
            "      members: false",
            "      show_root_heading: false",
            "",
        ]
        for module in modules:
            lines += [f"::: {module}", ""]
        pages[f"api/{package}.md"] = "\n".join(lines)
    return pages


def registries_markdown() -> str:
    """Markdown tables of every registry: name (linked to its API entry), import path, summary."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from rsfm.utils.registry import REGISTRIES

    out: list[str] = []
    for kind, registry in REGISTRIES.items():
        out += [f"### {kind.capitalize()}", "", "| name | defined in | what |", "|---|---|---|"]
        for name, path, doc in registry.describe():
            summary = doc.replace("|", "\\|").replace(":class:", "").replace(":data:", "")
            out.append(f"| [`{name}`][{path}] | `{path.rsplit('.', 1)[0]}` | {summary} |")
        out.append("")
    return "\n".join(out)


def readme_section(title: str, readme: Path = REPO / "README.md") -> str:
    """The body of the README's ``## <title>`` section, its sub-headings raised one level.

    Raises:
        ValueError: if the README has no ``## <title>`` heading.
    """
    lines = readme.read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index(f"## {title}")
    except ValueError:
        raise ValueError(f"{readme}: no section '## {title}' to include in the docs") from None
    body: list[str] = []
    fence = False
    for line in lines[start + 1 :]:
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and line.startswith("## "):
            break
        if not fence and line.startswith("###"):
            line = line[1:]
        body.append(line)
    return "\n".join(body).strip() + "\n"


def on_config(config, **kwargs):
    """Append the API pages to the nav's "API reference" section (created if absent)."""
    nav = config.get("nav")
    if nav is not None:
        entries = [{page[len("api/") : -len(".md")]: page} for page in api_pages()]
        for item in nav:
            if isinstance(item, dict) and API_SECTION in item:
                item[API_SECTION] = list(item[API_SECTION] or []) + entries
                break
        else:
            nav.append({API_SECTION: entries})
    return config


def on_files(files, config, **kwargs):
    """Add the generated API pages to the site's files."""
    from mkdocs.structure.files import File

    for path, content in api_pages().items():
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    """Fill the registry tables and the README sections into a page's markdown."""
    if REGISTRIES_MARKER in markdown:
        markdown = markdown.replace(REGISTRIES_MARKER, registries_markdown())
    return README_MARKER.sub(lambda m: readme_section(m.group("title").strip()), markdown)


def strip_sphinx_roles(html: str) -> str:
    """``:class:<code>~a.b.C</code>`` → ``<code>C</code>``; ``:func:<code>a.f</code>`` → ``<code>a.f</code>``.

    Also ``.. versionadded:: 0.2`` → *New in version 0.2.* and ``.. versionchanged:: 0.3 text``
    → *Changed in version 0.3:* text.
    """
    html = SPHINX_VERSION.sub(
        lambda m: (
            f"<em>{'New' if m.group(1) == 'added' else 'Changed'} in version {m.group(2)}"
            f"{'.' if m.group(1) == 'added' else ':'}</em> "
        ),
        html,
    )
    return SPHINX_ROLE.sub(
        lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html
    )


def on_page_content(html, page, config, files, **kwargs):
    """Render the docstrings' Sphinx roles as plain code."""
    return strip_sphinx_roles(html)
