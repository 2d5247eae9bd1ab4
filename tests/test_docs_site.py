"""The documentation site: `mkdocs build --strict` passes (no broken link or anchor, every page in the nav), the
generated configuration reference is up to date and holds every config key, every CLI command and option is
documented, and every docs page the code cites exists."""

import argparse
import dataclasses
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jaxspo import config_reference
from jaxspo.cli import build_parser
from jaxspo.config import Config, StageConfig, to_dict
from jaxspo.moved_keys import MOVED_KEYS
from tests.test_readme import config_keys

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built as `make docs` builds it (≈ 3–8 s), into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def page_text(path: Path) -> str:
    """A built page's text without tags or entities."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def test_code_in_table_cells_shows_pipes_as_github_does(site):
    """GitHub's tables need `\\|` even inside code; the site's hook (mkdocs_hooks.py) drops the backslash there."""
    cells = [
        cell
        for page in site.rglob("*.html")
        for cell in re.findall(r"<td[^>]*>.*?</td>", page.read_text(encoding="utf-8"), re.S)
    ]
    assert any("<code>" in cell and "|" in cell for cell in cells)
    assert not [cell for cell in cells if "\\|" in cell]


def test_config_reference_is_up_to_date():
    page = (ROOT / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    assert page == config_reference.render(), (
        "docs/reference/config.md is stale: run `python -m jaxspo.config_reference` (or `make docs`)"
    )


def test_the_built_reference_lists_every_config_key(site):
    keys = config_keys(to_dict(Config())) + [f"stages[].{field.name}" for field in dataclasses.fields(StageConfig)]
    built = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    missing = [key for key in keys if f"<td><code>{html.escape(key, quote=False)}</code></td>" not in built]
    assert not missing, f"the built configuration reference lacks {missing}"


def guide_rows() -> list[tuple[list[str], list[str]]]:
    """(keys, defaults as written) of each row of docs/configuration.md's `| key | default | meaning |` tables: `a.b.x`
    / `y` share the section `a.b`; one default may stand for all the row's keys; defaults are split at " / " (or ", "
    when that gives one per key)."""
    rows, in_table = [], False
    for line in (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8").splitlines():
        in_table = line.startswith("| key | default |") or (in_table and line.startswith("|"))
        if not (in_table and (match := re.match(r"^\| (`[^`|]+`(?: / `[^`|]+`)*) \| ([^|]*) \|", line))):
            continue
        first, *others = re.findall(r"`([^`]+)`", match.group(1))
        keys = [first] + [key if "." in key else f"{first.rpartition('.')[0]}.{key}" for key in others]
        cell = match.group(2).strip()
        defaults = next(
            (split for split in (cell.split(" / "), cell.split(", ")) if len(split) == len(keys)), [cell] * len(keys)
        )
        rows.append((keys, [default.strip() for default in defaults]))
    return rows


def as_value(text: str):
    """A default written in YAML, numbers compared as floats (`5e-4` is a string to YAML 1.1)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def test_the_configuration_guide_names_real_keys_and_their_code_defaults():
    """The hand-written table in docs/configuration.md explains keys at length; its keys and defaults must be the
    code's."""
    code = {key.path: key.default for section in config_reference.sections() for key in section.keys}
    rows = guide_rows()
    assert len(rows) > 100
    unknown = [key for keys, _ in rows for key in keys if key not in code]
    assert not unknown, (
        f"docs/configuration.md names keys the config does not have (see docs/reference/config.md): {unknown}"
    )
    wrong = [
        f"{key}: {default} (code: {code[key]})"
        for keys, defaults in rows
        for key, default in zip(keys, defaults)
        if re.fullmatch(r"`[^`]*`", default) and as_value(default.strip("`")) != as_value(code[key])
    ]
    assert not wrong, f"docs/configuration.md states defaults the code does not have: {wrong}"


FILE_SUFFIXES = {"json", "jsonl", "safetensors", "yaml", "md", "npz", "png", "txt", "py"}


def test_every_config_key_the_manual_names_exists():
    """A dotted name in code spans of README.md or a hand-written page that starts like a config key (`trainer.steps`,
    `stages[].beta`, `loss.soft_spo.kl_*`) is a key, a section, or inside a mapping key (`loss.terms.sft`); file names,
    quoted names (error messages) and parameter paths with a layer number are not keys."""
    found = config_reference.sections()
    keys, sections_ = {k.path for s in found for k in s.keys}, {s.prefix for s in found}
    mappings = {k.path for s in found for k in s.keys if k.type.startswith("dict")}
    tops = {key.split(".")[0].removesuffix("[]") for key in keys}
    stale = []
    for page in [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md")):
        if page.is_relative_to(ROOT / "docs" / "reference"):
            continue
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for span in re.findall(r"`([^`]+)`", line):
                for name in re.findall(r"(?<![\w./'-])([a-z_]+(?:\[\])?(?:\.[a-z_0-9*]+)+)", span):
                    parts = name.split(".")
                    if (
                        parts[0].removesuffix("[]") not in tops
                        or parts[-1] in FILE_SUFFIXES
                        or any(p.isdigit() for p in parts)
                    ):
                        continue
                    wildcard = name.endswith("*") and any(key.startswith(name.removesuffix("*")) for key in keys)
                    if (
                        name in keys
                        or name in sections_
                        or wildcard
                        or any(name.startswith(mapping + ".") for mapping in mappings)
                    ):
                        continue
                    if any(
                        old.startswith(name.removesuffix("*")) if name.endswith("*") else old == name
                        for old in MOVED_KEYS
                    ):
                        continue  # an old key, named where the manual says where it moved
                    stale.append(f"{page.relative_to(ROOT)}:{number}: {name}")
    assert not stale, (
        f"the manual names config keys that do not exist (docs/reference/config.md lists the real ones): {stale}"
    )


def cli_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """`jaxspo <command ...>` → its long options, for every command and sub-command of the parser."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found["jaxspo " + " ".join(words + (name,))] = [
                    o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"
                ]
                found |= cli_commands(sub, words + (name,))
    return found


def test_every_cli_command_and_option_is_documented(site):
    commands = page_text(site / "commands" / "index.html")
    everything = " ".join(page_text(path) for path in site.rglob("*.html"))
    commands_found = cli_commands(build_parser())
    assert {"jaxspo train", "jaxspo data prepare", "jaxspo launch"} <= set(commands_found)
    missing = [command for command in commands_found if not re.search(rf"{re.escape(command)}(?![\w-])", commands)]
    assert not missing, f"docs/commands.md lacks {missing}"
    undocumented = {
        command: [o for o in options if not re.search(rf"{re.escape(o)}(?![\w-])", everything)]
        for command, options in commands_found.items()
    }
    assert not any(undocumented.values()), f"options no page mentions: { {c: o for c, o in undocumented.items() if o} }"


def test_code_cites_existing_docs_pages_not_an_outside_methods_file():
    """Every `docs/….md` that the package, tests, configs, benchmarks or launch scripts cite exists, and nothing points
    at a methods file outside the repository."""
    bad = []
    for folder in ("jaxspo", "tests", "configs", "benchmarks", "launch", "docs"):
        for path in (ROOT / folder).rglob("*"):
            hidden = any(
                part.startswith(".") for part in path.relative_to(ROOT).parts
            )  # e.g. benchmarks/.venvs: installed packages
            if (
                path.suffix not in (".py", ".yaml", ".md", ".sh", ".sbatch")
                or path.name == Path(__file__).name
                or hidden
            ):
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                cited = [
                    page for page in re.findall(r"(?<![\w/.])docs/[\w/.-]+?\.md", line) if not (ROOT / page).is_file()
                ]
                if cited or "METHODS.md" in line or "METHODS §" in line:
                    bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bad, bad
