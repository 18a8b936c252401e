"""Griffe extension for the API reference: docstrings as Markdown.

dtcond's docstrings are prose with doctest lines (run by the test suite) and reST roles. This shows each run
of ``>>>`` lines as a Python code block without its ``# doctest:`` flags (without it, Markdown reads an
example's output such as ``[2.0, 2.484]`` as a link), and ``:class:`x``` / double backticks as code.
"""

from __future__ import annotations

import re

import griffe

FLAG = re.compile(r"\s*# doctest:.*$")
ROLE_SHORT = re.compile(r":\w+:`~[\w.]*?\.?(\w+)`")
ROLE = re.compile(r":\w+:`([^`]+)`")


def markdown_roles(text: str) -> str:
    """``:func:`dtcond.train` `` and ``:class:`~dtcond.config.EsperConfig` `` as `` `dtcond.train` `` and `` `EsperConfig` ``.

    >>> markdown_roles(":func:`dtcond.train`, :class:`~dtcond.config.EsperConfig`, ``x``")
    '`dtcond.train`, `EsperConfig`, `x`'
    """
    return ROLE.sub(r"`\1`", ROLE_SHORT.sub(r"`\1`", text)).replace("``", "`")


def fence_doctests(text: str) -> str:
    r"""Wrap each run of ``>>>``/``...`` lines and their output in a ```` ```python ```` fence.

    >>> fence_doctests("Mean.\n\n>>> 1 + 1\n2\n\nMore.").splitlines()
    ['Mean.', '', '```python', '>>> 1 + 1', '2', '```', '', 'More.']
    """
    out, block = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>") and not block:
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```python")
            block = True
        elif block and not stripped:
            out.append(f"{indent}```")
            block = False
        out.append(FLAG.sub("", line) if block else markdown_roles(line))
    if block:
        out.append(f"{indent}```")
    return "\n".join(out)


class FenceDoctests(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:  # every module, class, function and attribute
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
