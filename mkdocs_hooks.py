"""mkdocs hooks (mkdocs.yml ``hooks:``), so that the site shows what GitHub shows."""

import re

_TABLE_CELL = re.compile(r"<t[dh][^>]*>.*?</t[dh]>", re.S)
_CODE = re.compile(r"<code>.*?</code>", re.S)


def on_page_content(html: str, **_) -> str:
    """A pipe inside code in a table cell is written ``\\|`` (GitHub's tables need the escape even there);
    Python-Markdown keeps the backslash inside code, so the site drops it."""
    unescape = lambda code: code.group(0).replace("\\|", "|")  # noqa: E731
    return _TABLE_CELL.sub(lambda cell: _CODE.sub(unescape, cell.group(0)), html)
