"""The manual (README.md + the hand-written docs pages) explains every config key; the README starts with the two
set-up commands, stays short, and links every docs page."""

import dataclasses
from pathlib import Path

from jaxspo.config import Config, to_dict
from jaxspo.losses import get_loss, loss_names

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").rglob("*.md"))
GENERATED = (
    ROOT / "docs" / "reference"
)  # the configuration reference lists every key by construction (tests/test_docs_site.py)
MANUAL = "\n".join([README] + [page.read_text() for page in DOCS if GENERATED not in page.parents])
FREE_FORM = {"rules", "label_weights", "terms"}  # mappings whose entries are user-chosen names


def config_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and key not in FREE_FORM:
            keys += config_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def built_in_params_keys() -> list[str]:
    """``loss.params.<term>.<field>`` of every built-in loss that declares hyper-parameters."""
    specs = [get_loss(name) for name in loss_names()]
    return [
        f"loss.params.{s.name}.{f.name}"
        for s in specs
        if s.params and s.fn.__module__.startswith("jaxspo.")
        for f in dataclasses.fields(s.params)
    ]


def test_every_config_key_is_documented():
    missing = []
    assert "loss.params.simpo.gamma" in built_in_params_keys()
    for key in config_keys(to_dict(Config())) + built_in_params_keys():
        section, _, leaf = key.rpartition(".")
        # a key is documented by its own row, or shares a row with a sibling: `a.b.x` / `y`
        rows = [line for line in MANUAL.splitlines() if line.startswith("| `")]
        if not any(f"`{key}`" in row or (f"`{section}." in row and f"`{leaf}`" in row) for row in rows):
            missing.append(key)
    assert not missing, f"README.md and the hand-written docs pages lack config keys: {missing}"


def test_readme_starts_with_the_two_commands():
    head = README.split("\n## ")[0]
    assert "make demo" in head and "make test" in head


def test_readme_is_an_entry_point_that_links_every_docs_page():
    assert len(README.splitlines()) <= 300
    assert DOCS, "docs/ has no pages"
    for page in DOCS:
        link = f"docs/{page.relative_to(ROOT / 'docs').as_posix()}"
        assert f"({link})" in README, f"README does not link {link}"
