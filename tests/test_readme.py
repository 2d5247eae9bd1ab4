"""The README documents every config key and starts with the two set-up commands."""

from pathlib import Path

from jaxspo.config import Config, to_dict

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
FREE_FORM = {"rules", "label_weights", "terms"}  # mappings whose entries are user-chosen names


def config_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and key not in FREE_FORM:
            keys += config_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def test_every_config_key_is_documented():
    missing = []
    for key in config_keys(to_dict(Config())):
        section, _, leaf = key.rpartition(".")
        # a key is documented by its own row, or shares a row with a sibling: `a.b.x` / `y`
        rows = [line for line in README.splitlines() if line.startswith("| `")]
        if not any(f"`{key}`" in row or (f"`{section}." in row and f"`{leaf}`" in row) for row in rows):
            missing.append(key)
    assert not missing, f"README lacks config keys: {missing}"


def test_readme_starts_with_the_two_commands():
    head = README.split("\n## ")[0]
    assert "make demo" in head and "make test" in head
