"""jaxspo.config_reference on small made-up config dataclasses: sections, comments, defaults, escaping, --check."""

import dataclasses

from jaxspo import config_reference
from jaxspo.config_reference import Key, sections


@dataclasses.dataclass
class Inner:
    """The inner section, with ``code``."""

    width: int = 8  # columns
    # two lines above
    # of comment
    mode: str = "a"  # and one beside


@dataclasses.dataclass
class Entry:
    shift: float = 0.5  # moves it


@dataclasses.dataclass
class Outer:
    """The top."""

    name: str = ""  # runs/<name> | a **bold** claim
    inner: Inner = dataclasses.field(default_factory=Inner)
    items: list[Inner] = dataclasses.field(default_factory=list)
    table: dict[str, float] = dataclasses.field(default_factory=lambda: {"x": 1.0})
    made: dict[str, Entry] = dataclasses.field(default_factory=lambda: {"one": Entry()})
    registered: dict[str, object] = dataclasses.field(default_factory=dict)  # filled by a registry
    either: int | None = None


def test_sections_walk_nested_list_and_dict_dataclasses_with_their_comments():
    found = {s.prefix: s for s in sections(Outer, entries={"registered": lambda: {"mine": Entry}})}
    assert list(found) == ["", "inner", "items[]", "made.one", "registered.mine"]
    assert found[""].doc == "The top."
    assert found[""].keys[0] == Key("name", "str", '""', "runs/<name> | a **bold** claim")
    assert [k.path for k in found[""].keys] == ["name", "items", "table", "made", "registered", "either"]
    assert found[""].keys[2].default == "{x: 1.0}" and found[""].keys[2].type == "dict[str, float]"
    assert found["inner"].keys == (
        Key("inner.width", "int", "8", "columns"),
        Key("inner.mode", "str", "a", "two lines above of comment and one beside"),
    )
    assert [k.path for k in found["items[]"].keys] == ["items[].width", "items[].mode"]
    assert found["registered.mine"].keys == (Key("registered.mine.shift", "float", "0.5", "moves it"),)


def test_render_escapes_table_cells():
    page = config_reference.render(sections(Outer, entries={}))
    assert "## Top level" in page and "## `inner`" in page and "The inner section, with `code`." in page
    assert '| `name` | `str` | `""` | runs/&lt;name> \\| a \\*\\*bold\\*\\* claim |' in page
    assert "| `made` | `dict[str, Entry]` | `{one: {shift: 0.5}}` |  |" in page
    assert "| `either` | `int \\| None` | `null` |  |" in page


def test_check_reports_a_stale_page(tmp_path, capsys):
    page = tmp_path / "config.md"
    assert config_reference.main(["--out", str(page)]) == 0
    assert config_reference.main(["--check", "--out", str(page)]) == 0
    page.write_text(page.read_text() + "\nedited by hand\n")
    assert config_reference.main(["--check", "--out", str(page)]) == 1
    assert "out of date" in capsys.readouterr().err
