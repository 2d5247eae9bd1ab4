"""How often selfsup's degraded copies are really worse, per text key scoring, on the built-in task. Prints JSON.

    PYTHONPATH=. python benchmarks/selfsup_copies.py [--seeds 0 1 2 3 4] [--rows 2000] [--key-scorings tfidf rake]

For each seed's training split (``data.synthetic.seed``) the chosen responses of the first ``rows`` pairs are
degraded as configs/selfsup_dpo.yaml does (word unit, 3 levels, 20% per level; TF-IDF fitted on the same
responses) and each valid copy's gold rewards are compared with its original's: the share of copies whose
gold correctness (the labelled reward) is lower, equal or higher, and the mean change of gold brevity.
A copy that is not lower teaches the degree loss an order the labels do not support. Text scorings only
(``surprisal`` needs the reference model).
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

from jaxspo.config import load_config
from jaxspo.data import build_synthetic_task
from jaxspo.data.degrade import Degrader

RECIPE = "configs/selfsup_dpo.yaml"


def copy_outcomes(seed: int, rows: int, key_scoring: str) -> dict[str, float]:
    """Shares of valid copies with lower / equal / higher gold correctness, and the mean brevity change."""
    cfg = load_config(RECIPE, [f"data.synthetic.seed={seed}"])
    task = build_synthetic_task(cfg.data.synthetic)
    tok, s = task.tokenizer, cfg.loss.selfsup
    pairs = task.splits["train"][:rows]
    responses = [tok(r["chosen"], add_special_tokens=False)["input_ids"] for r in pairs]
    degrader = Degrader(tok, s.unit, key_scoring, s.levels, s.fraction, s.seed, s.stopwords).fit(responses)
    signs, brevity = [], []
    for row, (pair, ids) in enumerate(zip(pairs, responses)):
        original = task.gold_rewards(pair["prompt"], pair["chosen"])
        copies, valid = degrader.degrade(ids, np.random.default_rng([s.seed, 0, row]))
        for copy, ok in zip(copies, valid):
            if ok:
                gold = task.gold_rewards(pair["prompt"], tok.decode(copy))
                signs.append(np.sign(gold["correctness"] - original["correctness"]))
                brevity.append(gold["brevity"] - original["brevity"])
    signs = np.array(signs)
    return {
        "lower": float(np.mean(signs < 0)),
        "equal": float(np.mean(signs == 0)),
        "higher": float(np.mean(signs > 0)),
        "brevity_change": float(np.mean(brevity)),
        "copies": len(signs),
    }


def main() -> None:
    from jaxspo.platforms import choose_platforms

    choose_platforms()  # the CPU up front on a machine without a TPU: libtpu never probes
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--key-scorings", nargs="+", choices=("tfidf", "rake"), default=["tfidf", "rake"])
    args = parser.parse_args()
    report = {}
    for scoring in args.key_scorings:
        per_seed = [copy_outcomes(seed, args.rows, scoring) for seed in args.seeds]
        report[scoring] = {key: statistics.fmean(r[key] for r in per_seed) for key in per_seed[0]}
        report[scoring]["per_seed_lower"] = [r["lower"] for r in per_seed]
    print(json.dumps({"seeds": args.seeds, "rows": args.rows, "recipe": RECIPE, "key_scorings": report}, indent=1))


if __name__ == "__main__":
    main()
