"""Config loading: YAML + extends, dotted overrides, and clear errors for bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jaxspo.config import ConfigError, dump_yaml, load_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_recipe_extends_base_and_overrides_apply():
    cfg = load_config(REPO / "configs/demo.yaml", ["trainer.steps=7", "optimizer.learning_rate=1e-3", "run_dir=/tmp/x"])
    assert cfg.model.hidden_size == 128  # from base.yaml
    assert cfg.trainer.steps == 7 and cfg.optimizer.learning_rate == 1e-3
    assert cfg.run_dir == "/tmp/x"
    assert cfg.loss.terms == {"dpo": 1.0}


def test_override_of_dict_and_nested_dataclass():
    cfg = load_config(None, ["loss.terms={dpo: 1.0, sft: 0.2}", "data.synthetic.label_weights.brevity=0.5"])
    assert cfg.loss.terms == {"dpo": 1.0, "sft": 0.2}
    assert cfg.data.synthetic.label_weights == {"correctness": 1.0, "brevity": 0.5}


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "configs/demo.yaml", ["trainer.steps=3"])
    dump_yaml(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.stesp=5", "unknown config key 'trainer.stesp'; did you mean 'steps'?"),
        ("optimzer.learning_rate=1", "unknown config key 'optimzer'; did you mean 'optimizer'?"),
        ("trainer.steps=ten", "trainer.steps: expected an integer, got 'ten'"),
        ("trainer.steps=2.5", "trainer.steps: expected an integer, got 2.5"),
        ("loss.beta=yes", "loss.beta: expected a number, got True"),
        ("logging.tensorboard=3", "logging.tensorboard: expected true/false, got 3"),
        ("loss.terms={dpoo: 1.0}", "loss.terms: unknown loss 'dpoo'; did you mean 'dpo'?"),
        ("mesh.rules.embed=fsdpp", "mesh.rules.embed: unknown mesh axis 'fsdpp'"),
        ("model.num_kv_heads=3", "model.num_kv_heads (3) must divide num_heads (4)"),
        ("logging.peak_flops=-1", "logging.peak_flops must be >= 0 (FLOP/s per device; 0 = the device table), got -1"),
        ("trainer", "override 'trainer' is not of the form key=value"),
        ("eval.num_prompts=0", "eval.num_prompts must be at least 1, got 0"),
        ("eval.num_pairs=-2", "eval.num_pairs must be at least 1, got -2"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs/demo.yaml", [override])
    assert expected in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("trainer: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"trainer": {"batchsize": 4}}))
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(tmp_path / "typo.yaml")


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["configs/demo.yaml", "trainer.stepz=1"],
            "jaxspo: config error: unknown config key 'trainer.stepz'; did you mean 'steps'?",
        ),
        (["configs/missing.yaml"], "jaxspo: config error: config file not found:"),
        (["configs/demo.yaml", "trainer.steps=x"], "jaxspo: config error: trainer.steps: expected an integer, got 'x'"),
    ],
)
def test_cli_reports_one_line_error(args, expected):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxspo", "train", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
