"""The arguments of each ``jaxspo`` command (``jaxspo.cli`` wires each command to its handler)."""

from __future__ import annotations

import argparse

DEFAULT_PORT = 8476  # jaxspo launch --hosts: the coordinator port (any free port that every host can reach)


def positive_float(text: str, what: str = "a number") -> float:
    """argparse type: a finite number > 0 (``what`` names it in the complaint)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected {what} > 0, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a duration in seconds > 0."""
    return positive_float(text, "seconds")


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """``jaxspo train``'s arguments."""
    parser.add_argument("config", help="YAML recipe, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.steps=50 run_dir=runs/x")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """``jaxspo export``'s arguments."""
    parser.add_argument("run_dir", help="a run directory (holds config.yaml, params/, tokenizer/)")
    parser.add_argument(
        "--out", required=True, help="folder to write (config.json, safetensors, tokenizer, generation_config.json)"
    )
    parser.add_argument(
        "--dtype",
        default="",
        help="weights dtype, e.g. bfloat16 (default: checkpoint.export_dtype, else the params' dtype)",
    )
    parser.add_argument(
        "--max-shard-size",
        default="",
        help="split weights into shards of this size, e.g. 5GB (default: checkpoint.export_max_shard_size)",
    )
    parser.add_argument(
        "--peft",
        action="store_true",
        help="LoRA run: write the adapters in PEFT's format (adapter_config.json + "
        "adapter_model.safetensors) instead of the merged model",
    )


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """``jaxspo score``'s arguments."""
    parser.add_argument("model_dir", help="Hugging Face model folder (config.json, safetensors, tokenizer)")
    parser.add_argument("data", help="JSONL rows with prompt, chosen, rejected")
    parser.add_argument(
        "--out", required=True, help="JSONL written: each row plus chosen_logp, rejected_logp, lengths, truncated"
    )
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=1024,
        help="tokens per prompt+response (longer responses are cut; at most the model's positions)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="pairs per forward pass")
    parser.add_argument("--dtype", default="float32", help="parameter and compute dtype, e.g. bfloat16")


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """``jaxspo label``'s arguments."""
    parser.add_argument(
        "data", help="JSONL rows with prompt, chosen, rejected (any training format; may be compressed)"
    )
    parser.add_argument(
        "--reward-model",
        required=True,
        help="Hugging Face *ForSequenceClassification folder (num_labels=1, safetensors, tokenizer)",
    )
    parser.add_argument(
        "--out", required=True, help="JSONL written: each row plus chosen_reward, rejected_reward and soft_label"
    )
    parser.add_argument(
        "--temperature",
        type=positive_float,
        default=1.0,
        help="τ in p̂ = σ((r_chosen − r_rejected)/τ), in reward units",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="responses per forward pass")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=2048,
        help="tokens per prompt+response (longer inputs are cut; at most the model's positions)",
    )
    parser.add_argument("--dtype", default="float32", help="parameter and compute dtype, e.g. bfloat16")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (it is never replaced otherwise)"
    )


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """``jaxspo compile``'s arguments."""
    parser.add_argument("config", help="YAML recipe with the model architecture (or model.path to an HF folder)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.batch_size=64")
    parser.add_argument("--topology", required=True, help="TPU slice name: v4-8, v5p-128, v5e-256, v6e-64, 2xv5p-128 …")
    parser.add_argument("--json", default="", help="also write the report as JSON to this path")
    parser.add_argument("--find-max-batch", action="store_true", help="search the largest per-device batch that fits")
    parser.add_argument(
        "--step-seconds",
        type=positive_seconds,
        default=None,
        metavar="S",
        help="a measured (or target) step time: report the MFU it implies on the slice",
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``jaxspo data``'s arguments."""
    commands = parser.add_subparsers(dest="data_command", required=True)
    prepare = commands.add_parser(
        "prepare", help="build a TFDS dataset (ArrayRecord) from downloaded files and summarise it"
    )
    prepare.add_argument(
        "name",
        help="hh_rlhf, ultrafeedback_binarized, pku_safe_rlhf[/better|/safer], tldr_comparisons, "
        "helpsteer2[/ratings|/preference]",
    )
    prepare.add_argument("--manual-dir", required=True, help="folder holding the upstream files as downloaded")
    prepare.add_argument(
        "--data-dir", default="", help="TFDS data dir to write (default: TFDS' own, ~/tensorflow_datasets)"
    )
    prepare.add_argument(
        "--soft-label-temperature",
        type=positive_float,
        default=1.0,
        metavar="T",
        help="τ of the soft labels (ultrafeedback_binarized, tldr_comparisons, helpsteer2): p̂ = "
        "σ(margin / τ), see docs/datasets.md",
    )


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """``jaxspo eval``'s arguments."""
    parser.add_argument(
        "target", help="a run directory (uses its config.yaml, params/ and checkpoints/reference/) or a YAML recipe"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. eval.num_prompts=256")
    parser.add_argument(
        "--params",
        default="",
        help="policy params saved by a run (RUN_DIR/params); default: the run's, else the config's starting point",
    )
    parser.add_argument(
        "--reference",
        default="",
        help="reference params (RUN_DIR/checkpoints/reference); default: the run's, else the starting point",
    )
    parser.add_argument(
        "--reward-model",
        default="",
        help="Hugging Face sequence-classification folder: adds the win rate of the policy's samples "
        "over the reference's",
    )
    parser.add_argument("--out", default="", help="folder to write eval.json and data_report.json")


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    """``jaxspo plot``'s arguments."""
    parser.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--out", default="", help="PNG to write (default: RUN_DIR/curves.png)")


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """``jaxspo launch``'s arguments (:mod:`jaxspo.launch` runs the command)."""
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--local", type=int, metavar="N", help="N processes on this machine (CPU devices, gloo collectives)"
    )
    target.add_argument(
        "--tpu", metavar="NAME", help="every worker of this TPU VM pod slice (gcloud compute tpus tpu-vm ssh)"
    )
    target.add_argument(
        "--queued-resource", metavar="NAME", help="every worker of every node of this TPU queued resource"
    )
    target.add_argument(
        "--slurm", action="store_true", default=None, help="one srun step inside the current SLURM allocation"
    )
    target.add_argument(
        "--hosts", metavar="H0,H1,...", help="one process per host over ssh; the first host is the coordinator"
    )
    target.add_argument("--hostfile", metavar="FILE", help="as --hosts, one host per line (# comments)")
    parser.add_argument(
        "--devices-per-process", type=int, metavar="K", help="--local: virtual CPU devices per process (default 1)"
    )
    parser.add_argument("--zone", help="--tpu/--queued-resource: the slice's zone, e.g. us-central2-b")
    parser.add_argument("--project", help="--tpu/--queued-resource: Google Cloud project (default: gcloud's)")
    parser.add_argument("--nodes", type=int, help="--slurm: srun --nodes (default: the allocation's)")
    parser.add_argument(
        "--ntasks-per-node",
        type=int,
        help="--slurm: srun --ntasks-per-node, e.g. GPUs per node (default: the allocation's)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"coordinator port (--local: a free one; --hosts: {DEFAULT_PORT}; --slurm: JAX's, from the job id)",
    )
    parser.add_argument(
        "--workdir", help="remote targets: directory to run in (a checkout of this repository on every host)"
    )
    parser.add_argument(
        "--jaxspo", help="remote targets: the jaxspo program on the hosts (default 'jaxspo'), e.g. '.venv/bin/jaxspo'"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment variable for every process (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the exact commands instead of running them")
    parser.add_argument("config", help="YAML recipe, e.g. configs/demo.yaml (a path valid on every host)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, passed to jaxspo train")
