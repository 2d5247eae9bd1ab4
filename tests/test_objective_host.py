"""The objective's host side: it encodes its rows and prepares them (fields, eval metrics) once the reference exists;
the run and the plan reach a new objective's host preparation without a branch of their own."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.config import load_config
from jaxspo.data.tokenizer import build_task_tokenizer
from jaxspo.losses import register_loss
from jaxspo.objectives import Prepared, build_objective
from jaxspo.train import plan as plan_module
from jaxspo.train import run as run_module
from jaxspo.train import stages as stages_module
from jaxspo.train.plan import OnePreferencePhase
from jaxspo.train.run import Run
from jaxspo.train.stages import SequentialStages
from tests.cli_fuzz_support import TINY_MODEL, TINY_RUN

TOKENIZER = build_task_tokenizer()
ROW = {"prompt": "reverse 1 2 3 :", "chosen": "3 2 1", "rejected": "3 1 2", "soft_label": 0.2}


def test_the_preparations_run_in_order_each_seeing_the_fields_before_it():
    def first(context, arrays):
        return Prepared({"doubled": arrays["x"] * 2}, [lambda p, r: {"eval/first": 1.0}])

    def second(context, arrays):
        return Prepared({"plus": arrays["doubled"] + 1})

    objective = build_objective(load_config("configs/demo.yaml", [])).replace(preparations=(first, second))
    prepared = objective.prepare(None, {"x": np.arange(3)})
    assert sorted(prepared.fields) == ["doubled", "plus"]
    np.testing.assert_array_equal(prepared.fields["plus"], [1, 3, 5])
    assert [metric(None, None) for metric in prepared.eval_metrics] == [{"eval/first": 1.0}]


@pytest.mark.parametrize("terms, swapped", [("{dpo: 1.0}", False), ("{gdpo: 1.0}", True)])
def test_the_pair_objective_orients_soft_labels_only_when_a_loss_reads_them(terms, swapped):
    objective = build_objective(load_config("configs/demo.yaml", [f"loss.terms={terms}"]))
    arrays = objective.encode(TOKENIZER, "train")([ROW])
    as_given = objective.encode(TOKENIZER, "train")([ROW | {"soft_label": 0.8}])
    chosen_is = "rejected" if swapped else "chosen"
    np.testing.assert_array_equal(arrays["chosen_tokens"], as_given[f"{chosen_is}_tokens"])
    assert arrays["soft_label"][0] == pytest.approx(0.8 if swapped else 0.2)


def test_a_soft_label_loss_needs_a_label_on_every_train_row_but_not_on_held_out_rows():
    objective = build_objective(load_config("configs/demo.yaml", ["loss.terms={gdpo: 1.0}"]))
    unlabelled = {k: v for k, v in ROW.items() if k != "soft_label"}
    assert len(objective.encode(TOKENIZER, "eval")([unlabelled])["chosen_tokens"]) == 1
    with pytest.raises(ValueError, match="gdpo"):
        objective.encode(TOKENIZER, "train")([unlabelled])


def test_the_list_objective_encodes_lists_for_training_and_pairs_for_evaluation():
    cfg = load_config("configs/demo.yaml", ["loss.terms={soft_spo_best_of_n: 1.0}", "loss.reference=none"])
    objective = build_objective(cfg)
    listed = {"prompt": "reverse 1 2 3 :", "responses": ["3 2 1", "3 1 2", "1 2 3"], "best": 0}
    assert objective.encode(TOKENIZER, "train")([listed])["list_tokens"].shape[:2] == (1, 3)
    assert "chosen_tokens" in objective.encode(TOKENIZER, "eval")([ROW])


@pytest.mark.parametrize("needs_ranking", [False, True])
def test_a_list_loss_registration_says_whether_its_rows_need_a_full_ranking(needs_ranking):
    name = f"test_list_loss_needs_ranking_{needs_ranking}"
    register_loss(name, needs_reference=False, layout="list", needs_ranking=needs_ranking)(
        lambda logps, cfg: jnp.zeros(logps.policy.shape[:1])
    )
    objective = build_objective(
        load_config("configs/demo.yaml", [f"loss.terms={{{name}: 1.0}}", "loss.reference=none"])
    )
    best_only = {"prompt": "reverse 1 2 3 :", "responses": ["3 2 1", "3 1 2", "1 2 3"], "best": 0}
    if needs_ranking:
        with pytest.raises(ValueError, match="field 'ranking' is missing"):
            objective.encode(TOKENIZER, "train")([best_only])
    else:
        assert objective.encode(TOKENIZER, "train")([best_only])["list_tokens"].shape[:2] == (1, 3)


def with_marker(objective):
    """``objective`` whose encoder adds ``row_marker`` (ones, one per row) to what it encodes."""
    encode_pairs = objective.encoder

    def encoder(tokenizer, split):
        return lambda rows: encode_pairs(tokenizer, split)(rows) | {"row_marker": np.ones(len(rows), np.int32)}

    return objective.replace(encoder=encoder)


def added_field(name):
    """An objective's preparation adding ``name`` (one value per train row) and an eval metric."""

    def prepare(context, arrays):
        rows = len(arrays["chosen_tokens"])
        return Prepared({name: np.full(rows, context.cfg.loss.beta, np.float32)}, [lambda p, r: {"eval/new": 1.0}])

    return prepare


def test_a_new_objectives_host_preparation_is_reached_through_the_run_and_the_plan(tmp_path, monkeypatch):
    """A new objective (here the pair objective with another encoder and preparation) changes neither run.py nor
    plan.py: the run encodes with its encoder, the plan adds its fields and eval metrics."""

    def new_objective(cfg, phase="preference"):
        objective = build_objective(cfg, phase)
        return objective if phase == "sft" else with_marker(objective).replace(preparations=(added_field("new"),))

    monkeypatch.setattr(run_module, "build_objective", new_objective)
    monkeypatch.setattr(plan_module, "build_objective", new_objective)
    cfg = load_config("configs/demo.yaml", TINY_RUN + TINY_MODEL)
    run = Run(cfg, tmp_path)
    train = run.encoded("train")
    assert train["row_marker"].shape == (len(train["chosen_tokens"]),)
    assert "row_marker" not in run.encoded("sft")  # the warm start's rows: the SFT objective's
    plan = OnePreferencePhase(run)
    plan.start()
    setup = plan.phases[0].before()
    np.testing.assert_array_equal(setup.arrays["new"], np.full(len(train["chosen_tokens"]), cfg.loss.beta, np.float32))
    assert plan.evaluator.extra_metrics[-1](None, None) == {"eval/new": 1.0}


def test_a_sequential_stage_encodes_and_prepares_its_pairs_through_the_objective(tmp_path, monkeypatch):
    """The stages' hooks hold no encoding or preparation of their own: a stage's pairs go through the objective's
    encoder, and its preparation sees the stage (index, frozen π_i, π_{n−1} as the reference, the recipe's config)
    and, as its own config, the stage's (β_n)."""
    seen = []

    def stage_field(context, arrays):
        reference = context.stage.policy(context.stage.index)[1] is context.reference
        seen.append((context.stage.index, reference, context.stage.recipe is run.cfg))
        return added_field("new")(context, arrays)

    def new_objective(cfg, phase="preference"):
        objective = build_objective(cfg, phase)
        return objective if phase == "sft" else with_marker(objective).replace(preparations=(stage_field,))

    monkeypatch.setattr(run_module, "build_objective", new_objective)
    monkeypatch.setattr(stages_module, "build_objective", new_objective)
    stages_list = "stages=[{dimension: correctness, beta: 0.5}, {dimension: brevity, beta: 0.2, lambdas: [2.0]}]"
    cfg = load_config("configs/sequential.yaml", TINY_RUN + TINY_MODEL + [stages_list])
    run = Run(cfg, tmp_path)
    stages = SequentialStages(run)
    assert all(arrays["row_marker"].sum() == len(arrays["chosen_tokens"]) for arrays in stages.train_arrays)
    prepared = stages.prepared(1, lambda i: (run.graphdef, run.params))
    assert seen == [(1, True, True)]
    assert cfg.stages[1].beta != cfg.loss.beta  # the field below is stage 2's β, not the recipe's loss.beta
    np.testing.assert_array_equal(
        prepared.fields["new"], np.full(len(stages.train_arrays[1]["chosen_tokens"]), cfg.stages[1].beta, np.float32)
    )
