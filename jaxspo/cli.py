"""Command line: ``jaxspo train CONFIG [key=value ...]``, ``jaxspo export RUN_DIR --out DIR``,
``jaxspo score MODEL_DIR DATA.jsonl --out OUT.jsonl``,
``jaxspo label DATA.jsonl --reward-model DIR --out OUT.jsonl``, ``jaxspo compile CONFIG --topology v5p-128``,
``jaxspo launch (--local N | --tpu NAME | --queued-resource NAME | --slurm | --hosts H0,H1,...) CONFIG
[key=value ...]``, ``jaxspo data prepare NAME --manual-dir DIR``, ``jaxspo plot RUN_DIR``,
``jaxspo eval CONFIG [--params DIR]``.

Every command ends a user mistake with one line ``jaxspo: <kind>: <where>: <what>; <what to do>`` on stderr
and the exit status of its :class:`jaxspo.errors.UserError` class (1 input, 2 config or usage); anything else
is a bug: its traceback, a line asking to report it, and status 70.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from jaxspo import cli_arguments
from jaxspo.errors import (
    INTERNAL_ERROR_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    FileAccessError,
    Preempted,
    RunDirError,
    UsageError,
    UserError,
)

# Only the parser's modules load before the arguments are parsed (``jaxspo --help`` and a usage error pay for no
# more); each command imports what it runs, and train, compile and eval read their config before importing jax.


def _train(args: argparse.Namespace) -> int:
    from jaxspo.config import load_config

    cfg = load_config(args.config, args.overrides)
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # imports jax: only once the config is known good
    from jaxspo import distributed, host_memory
    from jaxspo.train.loop import train
    from jaxspo.train.summary import summary_table

    uninstall_heap = host_memory.install(cfg.trainer.host_heap)  # before XLA's CPU client starts its threads
    distributed.initialize()  # joins the multi-process run the environment describes, before any device use
    try:
        result = train(cfg, config_name=Path(args.config).stem)
    finally:
        uninstall_heap()  # its loop hooks; the heap's settings stay for the process
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
        f"scored {summary['rows']} rows ({summary['truncated']} truncated at --max-length "
        f"{summary['max_length']}{clamped}), "
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
        f"labelled {summary['rows']} pairs ({summary['truncated']} responses cut at --max-length "
        f"{summary['max_length']}): "
        f"the reward model prefers chosen in {summary['agree']:.1%}, mean soft_label "
        f"{summary['mean_soft_label']:.4f}: {args.out}"
    )
    return 0


def _compile(args: argparse.Namespace) -> int:
    import json
    import os

    os.environ.setdefault("TPU_ACCELERATOR_TYPE", args.topology)  # quiets libtpu's host probing on non-TPU machines
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several compiles may run side by side
    from jaxspo.config import load_config

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
    from jaxspo.config import load_config
    from jaxspo.eval_run import evaluate, resolve_target

    config, params, reference = resolve_target(args.target)
    cfg = load_config(config, args.overrides)
    from jaxspo.platforms import choose_platforms

    choose_platforms()
    from jaxspo import distributed, host_memory

    uninstall_heap = host_memory.install(cfg.trainer.host_heap)
    distributed.initialize()
    try:
        metrics = evaluate(cfg, args.params or params, args.reference or reference, args.reward_model, args.out)
    finally:
        uninstall_heap()
    if distributed.is_writer():
        width = max(map(len, metrics))
        print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in metrics.items()))
    return 0


def _launch(args: argparse.Namespace) -> int:
    from jaxspo.launch import launch

    return launch(args)


class _Parser(argparse.ArgumentParser):
    """argparse with its complaint raised as a UsageError (one line) instead of usage text and exit(2)."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}; see {self.prog} --help")


def _commands() -> list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]]:
    """(name, help, adds its arguments, handler) of every command, in ``jaxspo --help`` order."""
    return [
        (
            "train",
            "SFT warm start then preference optimisation, with evaluation",
            cli_arguments.add_train_arguments,
            _train,
        ),
        (
            "export",
            "write a finished run's policy as a Hugging Face model folder",
            cli_arguments.add_export_arguments,
            _export,
        ),
        (
            "score",
            "log-probs of chosen and rejected responses under a Hugging Face model",
            cli_arguments.add_score_arguments,
            _score,
        ),
        (
            "label",
            "soft labels p̂ = σ((r_chosen − r_rejected)/τ) of preference pairs from a Hugging Face reward model",
            cli_arguments.add_label_arguments,
            _label,
        ),
        (
            "compile",
            "compile the real train step for a TPU slice here (no TPU needed) and report memory",
            cli_arguments.add_compile_arguments,
            _compile,
        ),
        ("data", "prepare datasets", cli_arguments.add_data_arguments, _data_prepare),
        (
            "eval",
            "held-out preference and generation metrics of a policy (optionally win rate under a reward model)",
            cli_arguments.add_eval_arguments,
            _eval,
        ),
        (
            "plot",
            "draw a run's curves (loss, rewards, accuracies, KL, tokens/s) to PNG",
            cli_arguments.add_plot_arguments,
            _plot,
        ),
        (
            "launch",
            "run jaxspo train as every process of a multi-host job (TPU pod slice, SLURM, hosts, or --local N)",
            cli_arguments.add_launch_arguments,
            _launch,
        ),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxspo", description="Preference optimisation for causal LMs in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, handler in _commands():
        command = commands.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(handler=handler)
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
    # compile's AOT compiler is libtpu's own; train and eval choose once their config is read (a config error then
    # imports no jax)
    if args.command not in ("compile", "train", "eval"):
        from jaxspo.platforms import choose_platforms

        choose_platforms()
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
            import traceback

            traceback.print_exc()
            print(
                f"jaxspo: internal error: the {type(err).__name__} above is a bug in jaxspo; please "
                "report it to the maintainers with the command and this traceback",
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
