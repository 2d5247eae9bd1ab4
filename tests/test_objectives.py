"""The Objective seam: typed batches describe their shapes and shardings, build_objective reads the switches,
and ``jaxspo compile`` builds its train state through the loop's own initialisation."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec

from jaxspo.config import load_config
from jaxspo.objectives import build_objective
from jaxspo.objectives.batches import KL_FIELDS, SELFSUP_FIELDS, ListBatch, PackedPairBatch, PairBatch, SFTBatch
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from tests.test_compile import TINY

DIMS = {"batch": 8, "length": 16, "rows": 4, "width": 40, "responses": 3, "sides": 2, "levels": 2}


def test_a_batch_type_gives_abstract_shapes_and_reads_its_dimensions_back():
    names = PairBatch.required() + ("offset",) + SELFSUP_FIELDS
    abstract = PairBatch.abstract(names, DIMS)
    assert abstract.chosen_tokens.shape == (8, 16) and abstract.chosen_tokens.dtype == jnp.int32
    assert abstract.rejected_loss_mask.dtype == jnp.bool_ and abstract.soft_label.shape == (8,)
    assert abstract.selfsup_tokens.shape == (8, 2, 2, 16) and abstract.selfsup_level_valid.shape == (8, 2, 2)
    assert abstract.reference_chosen_logps is None and abstract.kl_tokens is None  # not read: an empty subtree
    assert PairBatch.dims_of({k: v.shape for k, v in abstract.fields().items()}) == {
        "batch": 8,
        "length": 16,
        "sides": 2,
        "levels": 2,
    }
    packed = PackedPairBatch.abstract(PackedPairBatch.required() + ("packed_pair",), DIMS)
    assert packed.packed_tokens.shape == (4, 40) and packed.packed_pair.shape == (4, 40)
    assert ListBatch.abstract(ListBatch.required(), DIMS).list_mask.shape == (8, 3)
    assert len(jax.tree.leaves(abstract)) == len(names)


def test_a_batch_type_splits_token_rows_over_context_and_the_rest_over_batch_only():
    mesh = make_mesh({"data": 2, "context": 4})
    leading = {"batch": 8, "rows": 8, "samples": 8}
    pairs = PairBatch.shardings(PairBatch.required() + SELFSUP_FIELDS + KL_FIELDS, mesh, DEFAULT_RULES, leading)
    assert pairs.chosen_tokens.spec == PartitionSpec("data", "context")
    assert pairs.soft_label.spec == PartitionSpec("data")
    assert pairs.selfsup_tokens.spec == PartitionSpec("data", None, None, None)
    assert pairs.kl_tokens.spec == PartitionSpec("data", None)
    sft = SFTBatch.shardings(SFTBatch.required(), mesh, DEFAULT_RULES, leading)
    assert sft.loss_mask.spec == PartitionSpec("data", "context")


def test_a_batch_missing_a_required_field_is_a_clear_error():
    with pytest.raises(ValueError, match="a pair batch needs the fields \\['soft_label'\\]"):
        PairBatch.from_fields({k: None for k in PairBatch.required() if k != "soft_label"})


@pytest.mark.parametrize(
    "overrides, batch_type, has, lacks",
    [
        ([], PairBatch, ("chosen_tokens",), ("packed_pair", "offset") + KL_FIELDS + SELFSUP_FIELDS),
        (["data.layout=packed", "data.pack_pairs=true"], PackedPairBatch, ("packed_pair",), ("chosen_tokens",)),
        (["loss.terms={soft_spo_ranked: 1.0}", "loss.kl.beta=0.1"], ListBatch, KL_FIELDS, ("soft_label",)),
        (["loss.reference=precomputed"], PairBatch, ("reference_chosen_logps",), ("selfsup_tokens",)),
        (["loss.selfsup.weight=0.5"], PairBatch, SELFSUP_FIELDS, ("selfsup_reference_logps",)),
    ],
)
def test_build_objective_reads_the_switches(overrides, batch_type, has, lacks):
    objective = build_objective(load_config("configs/demo.yaml", overrides))
    assert objective.batch_type is batch_type
    assert set(has) <= set(objective.fields) and not set(lacks) & set(objective.fields)
    kl = "loss.kl.beta=0.1" in overrides
    assert (objective.augmenter is not None) == kl and set(objective.host_fields).isdisjoint(KL_FIELDS)
    assert objective.reads_frozen == (kl or "loss.reference=precomputed" not in overrides)


def test_the_sft_phase_reads_single_sequences():
    objective = build_objective(load_config("configs/demo.yaml", []), "sft")
    assert objective.batch_type is SFTBatch and objective.fields == ("tokens", "valid", "loss_mask")
    with pytest.raises(ValueError, match="unknown phase 'dpo'"):
        build_objective(load_config("configs/demo.yaml", []), "dpo")


def test_jaxspo_compile_builds_the_classify_head_like_the_loop():
    from jaxspo.compile import abstract_step, compile_step

    classify = ["loss.selfsup.weight=0.5", "loss.selfsup.mode=classify", "loss.selfsup.levels=2", "mesh.data=-1"]
    cfg = load_config("configs/selfsup_simpo.yaml", TINY + classify)
    _, step, state, _, _ = abstract_step(cfg, make_mesh(cfg.mesh.shape(), jax.devices()[:4]))
    assert state.head["params"]["kernel"].shape == (cfg.model.hidden_size, 3)  # levels 0, 1, 2
    assert jax.tree.structure(state) == jax.tree.structure(step.state_sharding)
    report = compile_step(cfg, jax.devices()[:4])
    assert report["peak_bytes_per_device"] > 0 and not report["refused_by_compiler"]


def test_the_batch_types_name_the_arrays_the_host_data_encodes():
    from jaxspo.data.layout import PACKED_FIELDS
    from jaxspo.data.lists import LIST_FIELDS
    from jaxspo.data.pair_packing import ROW_FIELDS

    assert PackedPairBatch.required() == PACKED_FIELDS + ("soft_label",)
    assert set(ROW_FIELDS) <= set(PackedPairBatch.specs()) and ListBatch.required() == LIST_FIELDS


@pytest.mark.parametrize(
    "overrides, passes",
    [
        ([], ("rows",)),
        (["loss.reference=precomputed"], ()),
        (["loss.selfsup.weight=0.5"], ("rows", "selfsup")),
        (["loss.selfsup.weight=0.5", "loss.reference=precomputed"], ()),
        (["loss.terms={soft_spo_ranked: 1.0}", "loss.kl.beta=0.1"], ("kl",)),
    ],
)
def test_the_objective_names_the_rows_its_step_runs_the_reference_over(overrides, passes):
    """What the FLOP count and LoRA's frozen input ask instead of re-deriving the reference switches."""
    assert build_objective(load_config("configs/demo.yaml", overrides)).reference_passes == passes
