"""MkDocs hook: the CLI and configuration reference, generated from the config dataclasses at build time.

A page line ``<!-- config-reference -->`` becomes, for every command in :data:`dtcond.config.COMMANDS`, a table
of its keys (type, default, description) and one table per nested section, followed by the Hydra config
groups under ``conf/`` (each option with its file's leading comment). Descriptions are the fields' own
comments in the source (on the field's line or the lines just above it) or the class docstring's
``Attributes:`` entries, so a new field or a changed default shows up here without editing the docs.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import re
import textwrap
import tokenize
from pathlib import Path

MARKERS = {"<!-- config-reference -->": "_commands"}


def field_comments(cls) -> dict[str, str]:
    """Each field of dataclass ``cls`` -> its source comment (the comment lines just above it, then its own line's).

    >>> from dtcond.config import DataConfig
    >>> field_comments(DataConfig)["batch_size"], field_comments(DataConfig)["episode_weighting"][:6]
    ('', 'steps:')
    """
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line number (1-based) -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, line = [], node.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments.get(line, ""))
                line -= 1
            own = comments.get(node.lineno) if not lines[node.lineno - 1].strip().startswith("#") else None
            out[node.target.id] = " ".join(part for part in [*above, own or ""] if part)
    return out


def docstring_attributes(cls) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style class docstring: ``name[, name...]: text`` -> each name."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Attributes:\n((?:[ \t]+.*\n?|\n)+)", doc, re.M)
    out: dict[str, str] = {}
    if not match:
        return out
    names, text = None, []
    for line in match.group(1).splitlines():
        entry = re.match(r"^ {4}(\w+(?:, \w+)*): (.*)$", line)
        if entry:
            if names:
                out.update({n: " ".join(text) for n in names})
            names, text = entry.group(1).split(", "), [entry.group(2).strip()]
        elif names and line.strip():
            text.append(line.strip())
    if names:
        out.update({n: " ".join(text) for n in names})
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "–"
    if value == "???":  # omegaconf.MISSING: filled in by the command's YAML
        return "set by the YAML"
    if isinstance(value, str):
        return f"`{value!r}`" if value else "`''`"
    return f"`{value!r}`".replace("|", "\\|")


def plain(text: str) -> str:
    """reST roles and double backticks as Markdown code: ``:func:`dtcond.train` `` -> `` `dtcond.train` ``.

    >>> plain("``dtcond train`` and :func:`dtcond.train`, :class:`~dtcond.config.EsperConfig`")
    '`dtcond train` and `dtcond.train`, `EsperConfig`'
    """
    text = re.sub(r":\w+:`~[\w.]*?\.?(\w+)`", r"`\1`", text)
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return plain(text).replace("|", "\\|").replace("\n", " ")


def _section_type(cls, f) -> type | None:
    """The dataclass a field holds (for ``model: ModelConfig = field(default_factory=ModelConfig)``), else None."""
    factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return factory
    return None


def fields_table(cls, prefix: str = "", docs: dict[str, str] | None = None) -> tuple[str, list[tuple[str, type]]]:
    """A markdown table of ``cls``'s fields and the nested sections it found, as (key prefix, dataclass)."""
    docs = {**docstring_attributes(cls), **{k: v for k, v in field_comments(cls).items() if v}, **(docs or {})}
    rows, sections = ["| key | type | default | description |", "| --- | --- | --- | --- |"], []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        section = _section_type(cls, f)
        if section is not None:
            sections.append((f"{key}.", section))
            text = docs.get(f.name) or _summary(section)
            rows.append(f"| `{key}` | [{section.__name__}](#{section.__name__.lower()}) | – | {_cell(text)} |")
        else:
            rows.append(f"| `{key}` | `{_cell(str(f.type))}` | {_default(f)} | {_cell(docs.get(f.name, ''))} |")
    return "\n".join(rows), sections


def _summary(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    first = doc.split("\n\n")[0]
    first = re.sub(r"\n+>>>.*", "", first, flags=re.S)
    return plain(" ".join(first.split()))


def _commands(root: Path) -> str:
    config = importlib.import_module("dtcond.config")
    out, seen = [], set()
    for command, schema in config.COMMANDS.items():
        table, sections = fields_table(schema)
        out += [f"### `dtcond {command}`", "", f"Schema: `dtcond.config.{schema.__name__}`. {_summary(schema)}", "",
                f"Composed from `conf/{command}.yaml`; override any key as `key=value` (`dtcond {command} --cfg job` "
                "prints the composed config).", "", table, ""]
        for _, section in sections:
            seen.add(section)
    out += ["## Sections", "", "Nested sections shared by the commands; a key is written `section.key` "
            "(`model.context_len=10`), and in the library as a dict under the section's name.", ""]
    for section in sorted(seen, key=lambda c: c.__name__):
        table, _ = fields_table(section)
        out += [f"### {section.__name__}", "", _summary(section), "", table, ""]
    out += _groups(root)
    return "\n".join(out)


def _groups(root: Path) -> list[str]:
    out = ["## Config groups", "", "Presets under `conf/<group>/`, picked as `group=option` (`model=paper`, "
           "`trainer=gpu`). Each option's description is its file's leading comment.", ""]
    for group in sorted(p for p in (root / "conf").iterdir() if p.is_dir()):
        out += [f"### `{group.name}`", "", "| option | what |", "| --- | --- |"]
        for option in sorted(group.glob("*.yaml")):
            comment = []
            for line in option.read_text(encoding="utf-8").splitlines():
                if not line.startswith("#"):
                    break
                text = line.lstrip("#").strip()
                if not text.startswith("@package"):
                    comment.append(text)
            out.append(f"| `{group.name}={option.stem}` | {_cell(' '.join(comment))} |")
        out.append("")
    return out


def on_page_markdown(markdown, page, config, files):
    root = Path(config.config_file_path).resolve().parent
    for marker, builder in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, globals()[builder](root))
    return markdown
