"""``jaxspo eval CONFIG|RUN_DIR [--params DIR] [--reference DIR] [--reward-model DIR]``: evaluate a policy.

Runs the training loop's :class:`~jaxspo.train.evaluate.Evaluator` on the config's held-out split —
preference accuracy, implicit-reward accuracy and margins, DPO loss, and over responses sampled for the
held-out prompts: the gold rewards (built-in task), KL to the reference and length — with the same
sampling key as training's evaluations, so evaluating a finished run's ``params`` reproduces its last
logged evaluation (a LoRA run's adapters are merged into their base first: :func:`jaxspo.lora.choose.run_policy`).
With ``--reward-model`` it also samples the reference's responses and reports the
policy's win rate and both mean rewards under that model (:mod:`jaxspo.reward_model`).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import jax

from jaxspo.config import Config
from jaxspo.errors import RunDirError


def _copy(params: Any) -> Any:
    return jax.tree.map(lambda x: x, params)


def evaluate(
    cfg: Config, params_dir: str = "", reference_dir: str = "", reward_model: str = "", out_dir: str = ""
) -> dict[str, float]:
    """Metrics of the policy in ``params_dir`` (default: the config's starting point) against the reference in
    ``reference_dir`` (default: the starting point, or ``model.reference_path``); writes ``eval.json`` and
    ``data_report.json`` to ``out_dir`` when given."""
    from jaxspo.checkpoint import restore_params
    from jaxspo.lora.choose import run_policy
    from jaxspo.train.run import Run

    cfg = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, tensorboard=False, wandb=False))
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(out_dir or scratch)
        out.mkdir(parents=True, exist_ok=True)
        run = Run(cfg, out, screen=("eval",))
        start = run.params if run.reference_params is None else run.reference_params
        reference = restore_params(Path(reference_dir).resolve(), _copy(run.params)) if reference_dir else start
        policy = run.params
        if params_dir:  # a LoRA run's adapters are merged into the base named by base.json beside them
            policy = run_policy(cfg, Path(params_dir).resolve(), run.mesh, run.abstract_params, run.param_sharding)
        evaluator = run.evaluator(run.graphdef)
        key = jax.random.key(run.cfg.trainer.seed + 1)  # the key of training's evaluations
        metrics = evaluator(policy, reference, key)
        if reward_model:
            from jaxspo.reward_model import RewardModel, win_rate

            model = RewardModel(reward_model)
            ours = model.score(evaluator.prompt_texts, evaluator.sample(policy, key)[0])
            theirs = model.score(evaluator.prompt_texts, evaluator.sample(reference, jax.random.fold_in(key, 1))[0])
            metrics |= {
                "eval/rm/win_rate": win_rate(ours, theirs),
                "eval/rm/policy_reward": float(ours.mean()),
                "eval/rm/reference_reward": float(theirs.mean()),
            }
        run.log.close()
        if out_dir:
            (out / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def resolve_target(target: str) -> tuple[str, str, str]:
    """(config file, default params dir, default reference dir) of ``target``: a run directory (its
    ``config.yaml``, ``params`` and ``checkpoints/reference``) or a config file (no defaults)."""
    path = Path(target)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise RunDirError(
                f"{path}: a folder without config.yaml, so not a run directory; give a run directory or a YAML recipe"
            )
        reference = path / "checkpoints" / "reference"
        return (
            str(path / "config.yaml"),
            str(path / "params") if (path / "params").is_dir() else "",
            str(reference) if reference.is_dir() else "",
        )
    return target, "", ""
