"""Stand-ins for what TRL 1.16's ``DPOTrainer._compute_loss`` and ``compute_ref_log_probs`` read (their ``self``,
its accelerator and a model with fixed per-token log-probs): the TRL parity tests call those methods unbound."""

from __future__ import annotations

import contextlib
import types
from collections import defaultdict

import pytest

from jaxspo.config import LossConfig
from jaxspo.losses import get_loss

torch = pytest.importorskip("torch")


class StandInAccelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def autocast():  # entered by TRL's reference pass (``compute_ref_log_probs``)
        return contextlib.nullcontext()


class FixedLogpsModel:
    """Returns fixed per-token log-probs (TRL's fused-LM-head output fields) whatever the input."""

    training = True

    def __init__(self, per_token_logps: torch.Tensor):
        self.per_token_logps = per_token_logps

    def __call__(self, **kwargs):
        zeros = torch.zeros_like(self.per_token_logps, requires_grad=False)
        return types.SimpleNamespace(
            log_probs=self.per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None
        )


def trl_trainer(
    model,
    loss_type: str,
    cfg: LossConfig,
    *,
    ld_alpha: float | None = None,
    use_weighting: bool = False,
    divergence: str = "reverse_kl",
    divergence_alpha: float = 0.5,
) -> types.SimpleNamespace:
    """A stand-in for TRL's ``DPOTrainer`` (the ``self`` of ``_compute_loss`` and ``compute_ref_log_probs``): the
    fields they read, a precomputed reference, one loss type of weight 1 with ``cfg``'s β, label smoothing and
    DiscoPOP τ (``divergence``: TRL's ``f_divergence_type``, ``divergence_alpha`` its ``f_alpha_divergence_coef``)."""
    model.is_gradient_checkpointing, model._modules = False, {}  # read by TRL's PEFT and checkpointing checks
    return types.SimpleNamespace(
        model=model,
        ref_model=None,
        accelerator=StandInAccelerator(),
        aux_loss_enabled=False,
        ld_alpha=ld_alpha,
        precompute_ref_logps=True,
        f_divergence_type=divergence,
        f_alpha_divergence_coef=divergence_alpha,
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        use_weighting=use_weighting,
        args=types.SimpleNamespace(
            discopop_tau=get_loss("discopop").params_of(cfg).tau, gradient_checkpointing_kwargs=None
        ),
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
