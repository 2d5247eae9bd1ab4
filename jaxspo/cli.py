"""Command line: ``jaxspo train CONFIG [key=value ...]``, ``jaxspo export RUN_DIR --out DIR``,
``jaxspo score MODEL_DIR DATA.jsonl --out OUT.jsonl``, ``jaxspo label DATA.jsonl --reward-model DIR --out OUT.jsonl``, ``jaxspo compile CONFIG --topology v5p-128``,
``jaxspo launch (--local N | --tpu NAME | --queued-resource NAME | --slurm | --hosts H0,H1,...) CONFIG [key=value ...]``,
``jaxspo data prepare NAME --manual-dir DIR``, ``jaxspo plot RUN_DIR``, ``jaxspo eval CONFIG [--params DIR]``.

Every command ends a user mistake with one line ``jaxspo: <kind>: <where>: <what>; <what to do>`` on stderr
and the exit status of its :class:`jaxspo.errors.UserError` class (1 input, 2 config or usage); anything else
is a bug: its traceback, a line asking to report it, and status 70.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from pathlib import Path

from jaxspo import launch
from jaxspo.config import load_config
from jaxspo.errors import (
    INTERNAL_ERROR_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    FileAccessError,
    Preempted,
    RunDirError,
    UsageError,
    UserError,
)
from jaxspo.platforms import choose_platforms


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    choose_platforms()  # imports jax: only once the config is known good
    from jaxspo import distributed, host_memory
    from jaxspo.train.loop import train
    from jaxspo.train.summary import summary_table

    host_memory.install(cfg.trainer.host_heap)  # before XLA's CPU client starts its threads
    distributed.initialize()  # joins the multi-process run the environment describes, before any device use
    result = train(cfg, config_name=Path(args.config).stem)
    if distributed.is_writer():
        table = summary_table(result.before, result.after, "+".join(cfg.loss.terms))
        (result.run_dir / "summary.md").write_text(table + "\n")
        print(f"\nrun directory: {result.run_dir}\n\n{table}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from jaxspo.export import export_run

    out = export_run(args.run_dir, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size, peft=args.peft)
    print(f"exported {args.run_dir} to {out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from jaxspo.score import score_file

    summary = score_file(
        args.model_dir, args.data, args.out, max_length=args.max_length, batch_size=args.batch_size, dtype=args.dtype
    )
    clamped = (
        f"; --max-length {args.max_length} clamped to the model's {summary['max_length']} positions"
        if summary["max_length"] < args.max_length
        else ""
    )
    print(
        f"scored {summary['rows']} rows ({summary['truncated']} truncated at --max-length {summary['max_length']}{clamped}), "
        f"mean chosen-rejected log-prob margin {summary['mean_margin']:.4f}: {args.out}"
    )
    return 0


def _label(args: argparse.Namespace) -> int:
    from jaxspo.label import label_file

    summary = label_file(
        args.data,
        args.reward_model,
        args.out,
        temperature=args.temperature,
        batch_size=args.batch_size,
        max_length=args.max_length,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    print(
        f"labelled {summary['rows']} pairs ({summary['truncated']} responses cut at --max-length {summary['max_length']}): "
        f"the reward model prefers chosen in {summary['agree']:.1%}, mean soft_label {summary['mean_soft_label']:.4f}: {args.out}"
    )
    return 0


def _compile(args: argparse.Namespace) -> int:
    import json
    import os

    os.environ.setdefault("TPU_ACCELERATOR_TYPE", args.topology)  # quiets libtpu's host probing on non-TPU machines
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several compiles may run side by side
    cfg = load_config(args.config, args.overrides)
    from jaxspo.compile import fit_report, format_report, resolve_model

    cfg = resolve_model(cfg)
    report = fit_report(cfg, args.topology, find_max_batch=args.find_max_batch, step_seconds=args.step_seconds)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from jaxspo.data.prepare import format_summary, prepare

    print(format_summary(prepare(args.name, args.manual_dir, args.data_dir, args.soft_label_temperature)))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from jaxspo.data.files import BadLine, json_lines
    from jaxspo.train.metrics_log import plot_curves

    metrics = Path(args.run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        raise RunDirError(f"{metrics}: does not exist; give a run directory (it holds metrics.jsonl)")
    for number, row in json_lines(metrics):
        if isinstance(row, BadLine):
            raise RunDirError(f"{metrics}:{number}: {row.detail}; delete that line (a write cut short) and plot again")
    out = Path(args.out or Path(args.run_dir) / "curves.png")
    if not plot_curves(metrics, out):
        raise RunDirError(f"{metrics}: holds none of the plotted metrics; plot a run that has logged steps")
    print(f"wrote {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from jaxspo.eval_run import evaluate, resolve_target

    config, params, reference = resolve_target(args.target)
    cfg = load_config(config, args.overrides)
    choose_platforms()
    from jaxspo import distributed, host_memory

    host_memory.install(cfg.trainer.host_heap)
    distributed.initialize()
    metrics = evaluate(cfg, args.params or params, args.reference or reference, args.reward_model, args.out)
    if distributed.is_writer():
        width = max(map(len, metrics))
        print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in metrics.items()))
    return 0


def _positive_float(text: str, what: str = "a number") -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected {what} > 0, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    return _positive_float(text, "seconds")


class _Parser(argparse.ArgumentParser):
    """argparse with its complaint raised as a UsageError (one line) instead of usage text and exit(2)."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}; see {self.prog} --help")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxspo", description="Preference optimisation for causal LMs in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="SFT warm start then preference optimisation, with evaluation")
    train.add_argument("config", help="YAML recipe, e.g. configs/demo.yaml")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.steps=50 run_dir=runs/x")
    train.set_defaults(handler=_train)
    export = commands.add_parser("export", help="write a finished run's policy as a Hugging Face model folder")
    export.add_argument("run_dir", help="a run directory (holds config.yaml, params/, tokenizer/)")
    export.add_argument(
        "--out", required=True, help="folder to write (config.json, safetensors, tokenizer, generation_config.json)"
    )
    export.add_argument(
        "--dtype",
        default="",
        help="weights dtype, e.g. bfloat16 (default: checkpoint.export_dtype, else the params' dtype)",
    )
    export.add_argument(
        "--max-shard-size",
        default="",
        help="split weights into shards of this size, e.g. 5GB (default: checkpoint.export_max_shard_size)",
    )
    export.add_argument(
        "--peft",
        action="store_true",
        help="LoRA run: write the adapters in PEFT's format (adapter_config.json + adapter_model.safetensors) instead of the merged model",
    )
    export.set_defaults(handler=_export)
    score = commands.add_parser("score", help="log-probs of chosen and rejected responses under a Hugging Face model")
    score.add_argument("model_dir", help="Hugging Face model folder (config.json, safetensors, tokenizer)")
    score.add_argument("data", help="JSONL rows with prompt, chosen, rejected")
    score.add_argument(
        "--out", required=True, help="JSONL written: each row plus chosen_logp, rejected_logp, lengths, truncated"
    )
    score.add_argument(
        "--max-length",
        type=_positive_int,
        default=1024,
        help="tokens per prompt+response (longer responses are cut; at most the model's positions)",
    )
    score.add_argument("--batch-size", type=_positive_int, default=8, help="pairs per forward pass")
    score.add_argument("--dtype", default="float32", help="parameter and compute dtype, e.g. bfloat16")
    score.set_defaults(handler=_score)
    label = commands.add_parser(
        "label",
        help="soft labels p̂ = σ((r_chosen − r_rejected)/τ) of preference pairs from a Hugging Face reward model",
    )
    label.add_argument("data", help="JSONL rows with prompt, chosen, rejected (any training format; may be compressed)")
    label.add_argument(
        "--reward-model",
        required=True,
        help="Hugging Face *ForSequenceClassification folder (num_labels=1, safetensors, tokenizer)",
    )
    label.add_argument(
        "--out", required=True, help="JSONL written: each row plus chosen_reward, rejected_reward and soft_label"
    )
    label.add_argument(
        "--temperature",
        type=_positive_float,
        default=1.0,
        help="τ in p̂ = σ((r_chosen − r_rejected)/τ), in reward units",
    )
    label.add_argument("--batch-size", type=_positive_int, default=8, help="responses per forward pass")
    label.add_argument(
        "--max-length",
        type=_positive_int,
        default=2048,
        help="tokens per prompt+response (longer inputs are cut; at most the model's positions)",
    )
    label.add_argument("--dtype", default="float32", help="parameter and compute dtype, e.g. bfloat16")
    label.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (it is never replaced otherwise)"
    )
    label.set_defaults(handler=_label)
    compile_ = commands.add_parser(
        "compile", help="compile the real train step for a TPU slice here (no TPU needed) and report memory"
    )
    compile_.add_argument("config", help="YAML recipe with the model architecture (or model.path to an HF folder)")
    compile_.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.batch_size=64")
    compile_.add_argument(
        "--topology", required=True, help="TPU slice name: v4-8, v5p-128, v5e-256, v6e-64, 2xv5p-128 …"
    )
    compile_.add_argument("--json", default="", help="also write the report as JSON to this path")
    compile_.add_argument("--find-max-batch", action="store_true", help="search the largest per-device batch that fits")
    compile_.add_argument(
        "--step-seconds",
        type=_positive_seconds,
        default=None,
        metavar="S",
        help="a measured (or target) step time: report the MFU it implies on the slice",
    )
    compile_.set_defaults(handler=_compile)
    data = commands.add_parser("data", help="prepare datasets").add_subparsers(dest="data_command", required=True)
    data_prepare = data.add_parser(
        "prepare", help="build a TFDS dataset (ArrayRecord) from downloaded files and summarise it"
    )
    data_prepare.add_argument(
        "name",
        help="hh_rlhf, ultrafeedback_binarized, pku_safe_rlhf[/better|/safer], tldr_comparisons, helpsteer2[/ratings|/preference]",
    )
    data_prepare.add_argument("--manual-dir", required=True, help="folder holding the upstream files as downloaded")
    data_prepare.add_argument(
        "--data-dir", default="", help="TFDS data dir to write (default: TFDS' own, ~/tensorflow_datasets)"
    )
    data_prepare.add_argument(
        "--soft-label-temperature",
        type=_positive_float,
        default=1.0,
        metavar="T",
        help="τ of the soft labels (ultrafeedback_binarized, tldr_comparisons, helpsteer2): p̂ = σ(margin / τ), see docs/datasets.md",
    )
    data_prepare.set_defaults(handler=_data_prepare)
    evaluate = commands.add_parser(
        "eval", help="held-out preference and generation metrics of a policy (optionally win rate under a reward model)"
    )
    evaluate.add_argument(
        "target", help="a run directory (uses its config.yaml, params/ and checkpoints/reference/) or a YAML recipe"
    )
    evaluate.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. eval.num_prompts=256")
    evaluate.add_argument(
        "--params",
        default="",
        help="policy params saved by a run (RUN_DIR/params); default: the run's, else the config's starting point",
    )
    evaluate.add_argument(
        "--reference",
        default="",
        help="reference params (RUN_DIR/checkpoints/reference); default: the run's, else the starting point",
    )
    evaluate.add_argument(
        "--reward-model",
        default="",
        help="Hugging Face sequence-classification folder: adds the win rate of the policy's samples over the reference's",
    )
    evaluate.add_argument("--out", default="", help="folder to write eval.json and data_report.json")
    evaluate.set_defaults(handler=_eval)
    plot = commands.add_parser("plot", help="draw a run's curves (loss, rewards, accuracies, KL, tokens/s) to PNG")
    plot.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    plot.add_argument("--out", default="", help="PNG to write (default: RUN_DIR/curves.png)")
    plot.set_defaults(handler=_plot)
    launcher = commands.add_parser(
        "launch",
        help="run jaxspo train as every process of a multi-host job (TPU pod slice, SLURM, hosts, or --local N)",
    )
    launch.add_arguments(launcher)
    launcher.set_defaults(handler=launch.launch)
    return parser


def _as_user_error(err: Exception) -> UserError | None:
    """``err`` as the user mistake it reports, or None for a bug. An OSError naming a path the OS could not
    open (missing, not permitted, a folder where a file belongs) is a mistake in a path the user gave."""
    if isinstance(err, UserError):
        return err
    path_errors = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
    if isinstance(err, path_errors) and err.filename:
        return FileAccessError(f"{err.filename}: {err.strerror}; check the path and its permissions")
    return None


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("compile", "train", "eval"):  # compile's AOT compiler is libtpu's own; train and
        choose_platforms()  # eval choose once their config is read (a config error then imports no jax)
    return args.handler(args)


def main(argv: list[str] | None = None) -> int:
    """Runs one command; see the module docstring for how it ends."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("jaxspo: %(message)s"))
    logger = logging.getLogger("jaxspo")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    propagate, logger.propagate = logger.propagate, False  # absl's root handler would print each line again
    try:
        return _run(argv)
    except Preempted as err:
        print(f"jaxspo: {err}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except Exception as err:  # the one boundary: a user mistake becomes one line, anything else is a bug
        mistake = _as_user_error(err)
        if mistake is None:
            traceback.print_exc()
            print(
                f"jaxspo: internal error: the {type(err).__name__} above is a bug in jaxspo; please report it to the maintainers with the command and this traceback",
                file=sys.stderr,
            )
            return INTERNAL_ERROR_EXIT_CODE
        message = re.sub(r"\s*\n\s*", " ", str(mistake)).strip()  # one line, whatever the message holds
        print(f"jaxspo: {mistake.kind}: {message}", file=sys.stderr)
        return mistake.exit_status
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
