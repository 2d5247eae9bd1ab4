"""The objective switches are read in one place (jaxspo/objectives/switches.py, with checks.py validating how they
combine), import no jax, and a combination that cannot run is a one-line config error."""

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import jaxspo
from jaxspo.config import ConfigError, load_config

PACKAGE = Path(jaxspo.__file__).resolve().parent
READERS = {"objectives/switches.py", "objectives/checks.py"}  # the switches' home and their validation
# reads of a switch's value: the pair layout, several pairs per row, selfsup's λ and β_KL as on/off, a term's layout,
# the offset terms, whether a recipe has stages
SWITCH_READS = re.compile(
    r"\.layout\s*[!=]=|\.pack_pairs\b|\.selfsup\.weight\s*[<>!=]|\.kl\.beta\s*[<>!=]|get_loss\([^)]*\)\.layout"
    r"|offset_losses\(|\bif\s+[\w.]*cfg\.stages\b|else\s+[\w.]*cfg\.stages\b"
)


def code_without_strings(path: Path) -> str:
    """The module's code with string literals and comments blanked (so docs and messages may name the keys)."""
    text = path.read_text()
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    code = list(text)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.STRING, tokenize.COMMENT):
            begin, end = starts[token.start[0] - 1] + token.start[1], starts[token.end[0] - 1] + token.end[1]
            code[begin:end] = " " * (end - begin)
    return "".join(code)


def test_the_objective_switches_are_read_only_where_the_objectives_live():
    readers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if SWITCH_READS.search(code_without_strings(path))
    }
    # the loss registry defines offset_losses; data/layout.py lays out packed rows for the benchmark's own arrays
    assert readers - READERS == {"losses/registry.py", "data/layout.py"}, sorted(readers - READERS)


def test_the_scan_sees_the_reads_in_the_switches_module_and_none_in_strings(tmp_path):
    assert SWITCH_READS.search(code_without_strings(PACKAGE / "objectives" / "switches.py"))
    (tmp_path / "m.py").write_text('"""if cfg.data.pack_pairs"""\nx = 1  # cfg.data.pack_pairs\n')
    assert not SWITCH_READS.search(code_without_strings(tmp_path / "m.py"))


def test_the_pattern_catches_a_switch_read():
    """The scan above can fail: each kind of read it looks for is matched."""
    for line in (
        'packed = cfg.data.layout == "packed"',
        "if cfg.data.pack_pairs:",
        "on = loss.selfsup.weight > 0",
        "if cfg.loss.kl.beta > 0:",
        'lists = get_loss(name).layout == "list"',
        "offset = offset_losses(cfg.loss.terms)",
        "plan = Stages(run) if run.cfg.stages else One(run)",
    ):
        assert SWITCH_READS.search(line), line


def test_the_switches_and_their_checks_import_no_jax():
    probe = (
        "import sys, jaxspo.objectives.switches, jaxspo.objectives.checks\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'transformers', 'numpy'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("buckets", ["data.auto_buckets=2", "data.buckets=[16,32]"])
def test_selfsup_with_length_buckets_is_a_one_line_config_error(buckets):
    with pytest.raises(ConfigError, match=r"^loss.selfsup.weight: .* set data.buckets=\[\] and data.auto_buckets=0"):
        load_config("configs/demo.yaml", ["loss.selfsup.weight=0.5", buckets])
    load_config("configs/demo.yaml", ["loss.selfsup.weight=0", buckets])  # without selfsup the buckets are fine


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.terms={sequential: 1.0}"], "loss.terms: 'sequential' needs a 'stages' list"),
        (["loss.selfsup.weight=0.5", "lora.rank=4"], "loss.selfsup.weight: selfsup is not supported with LoRA"),
        (["loss.ld_alpha=0.5", "data.layout=packed"], "loss.ld_alpha < 1 needs data.layout: padded"),
        (["data.layout=packed", "loss.kl.beta=0.1"], "data.layout: 'packed' is not supported here (loss.kl.beta"),
    ],
)
def test_the_objective_checks_run_when_a_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("configs/demo.yaml", overrides)
