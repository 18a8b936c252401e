"""MkDocs hook: render committed results and files from outside ``docs/`` into the site at build time.

- Every file under ``experiments/*/results/`` (plots, JSON, CSV), ``benchmarks/results/`` and ``notebooks/`` is
  added to the site at its repository path, so a page can link or show it and ``--strict`` checks the link.
- A line ``<!-- include: path/from/the/repo/root.md -->`` in a page is replaced by that file's text, its
  relative links rewritten to resolve from the page and, when the page has its own title above the line, its
  headings one level down. An experiment's page
  includes its ``results/summary.md``, so rerunning the experiment updates the page without editing the docs.

A missing included file fails the build (an error, not a warning).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

EXTRA = ("experiments/*/results/*", "experiments/*/results/rerun/*", "benchmarks/results/*", "notebooks/*.ipynb")
INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->[ \t]*$", re.M)
LINK = re.compile(r"(?P<pre>!?\[[^\]]*\]\()(?P<target>[^)\s]+)(?P<post>[^)]*\))")
HEADING = re.compile(r"^(#{1,5}) ", re.M)
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files, config):
    root = _root(config)
    for pattern in EXTRA:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and path.suffix != ".md":  # included .md files are text in a page, not pages
                rel = path.relative_to(root).as_posix()
                if files.get_file_from_path(rel) is None:
                    files.append(File(rel, str(root), config.site_dir, config.use_directory_urls))
    return files


def _relative(target: str, source_dir: str, page_dir: str) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):  # a URL, an anchor or an absolute path: unchanged
        return target
    path, _, anchor = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(source_dir, path))
    out = posixpath.relpath(resolved, page_dir or ".")
    return out + (f"#{anchor}" if anchor else "")


def render_include(text: str, source: str, page_src_uri: str, shift: bool = True) -> str:
    """``text`` (the file at repo path ``source``) as it reads inside the page ``page_src_uri`` (a docs path).

    >>> render_include("# T\\n![p](p.png) [x](https://x.org)", "experiments/a/results/summary.md", "experiments/a.md")
    '## T\\n![p](a/results/p.png) [x](https://x.org)'
    """
    source_dir, page_dir = posixpath.dirname(source), posixpath.dirname(page_src_uri)
    parts, last = [], 0
    for fence in FENCE.finditer(text):  # headings and links inside code blocks stay as they are
        parts.append(_prose(text[last:fence.start()], source_dir, page_dir, shift))
        parts.append(fence.group(0))
        last = fence.end()
    parts.append(_prose(text[last:], source_dir, page_dir, shift))
    return "".join(parts)


def _prose(text: str, source_dir: str, page_dir: str, shift: bool) -> str:
    if shift:
        text = HEADING.sub(lambda m: "#" + m.group(1) + " ", text)
    return LINK.sub(lambda m: m.group("pre") + _relative(m.group("target"), source_dir, page_dir) + m.group("post"), text)


def on_page_markdown(markdown, page, config, files):
    root = _root(config)

    def include(match):
        path = match.group("path")
        file = root / path
        if not file.is_file():
            raise PluginError(f"{page.file.src_uri}: included file {path} does not exist")
        titled = re.search(r"^# ", markdown[:match.start()], re.M) is not None
        return render_include(file.read_text(encoding="utf-8"), path, page.file.src_uri, shift=titled)

    return INCLUDE.sub(include, markdown)
