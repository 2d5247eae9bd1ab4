"""Command line: ``jaxspo train CONFIG [key=value ...]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxspo.config import ConfigError, load_config


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from jaxspo.train.loop import train  # heavy imports only once the config is known good
    from jaxspo.train.summary import summary_table

    result = train(cfg, config_name=Path(args.config).stem)
    table = summary_table(result.before, result.after, "+".join(cfg.loss.terms))
    (result.run_dir / "summary.md").write_text(table + "\n")
    print(f"\nrun directory: {result.run_dir}\n\n{table}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxspo", description="Preference optimisation for causal LMs in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="SFT warm start then preference optimisation, with evaluation")
    train.add_argument("config", help="YAML recipe, e.g. configs/demo.yaml")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.steps=50 run_dir=runs/x")
    train.set_defaults(handler=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"jaxspo: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
