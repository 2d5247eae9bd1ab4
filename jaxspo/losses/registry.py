"""The per-pair inputs every loss sees, and the name → loss registry.

A loss is a pure function ``fn(logps: PairLogps, cfg: LossConfig)`` returning either the per-pair
loss ``[B]`` or ``(loss [B], extra)`` where ``extra`` maps metric names to per-pair values ``[B]``
(reduced to (sum, count) by :func:`~jaxspo.losses.objective.preference_objective`). ``cfg`` carries the
settings shared by all losses (``beta``, ``label_smoothing``, ``reference``). A loss with its own
hyper-parameters declares them as a frozen dataclass, ``@register_loss("name", params=NameParams)``, and
is called ``fn(logps, cfg, params)`` with the ``NameParams`` read from ``loss.params.<name>`` (defaults
where the config has no section). Declare a range with :func:`hyperparameter`; config validation checks it.

Two ways to add a loss without editing jaxspo:

- decorate it with ``@register_loss("name")`` in a module you import before training, or
- name it ``"package.module:function"`` in ``loss.terms``: :func:`get_loss` imports the module and
  registers the function under that name (keeping the flags and ``params`` of an ``@register_loss``
  decorator on it; a plain function needs a reference and no soft label). Its section is then
  ``loss.params."package.module:function"``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class PairLogps:
    """Per-pair sequence log-probabilities (sums over response tokens, nats) and pair fields.

    All arrays are ``[B]`` float32. ``reference_*`` are None for reference-free runs. ``offset`` is a
    per-pair logit offset read by losses registered with ``needs_offset`` (``sequential``'s constraint
    term, nats); None means zeros.
    """

    policy_chosen: jax.Array
    policy_rejected: jax.Array
    reference_chosen: jax.Array | None
    reference_rejected: jax.Array | None
    chosen_length: jax.Array  # response tokens counted in policy_chosen
    rejected_length: jax.Array
    soft_label: jax.Array  # p̂ = P(chosen ≻ rejected); 1.0 where the data has none
    offset: jax.Array | None = None  # per-pair offset (batch field "offset"); None = zeros

    def log_ratios(self) -> tuple[jax.Array, jax.Array]:
        """log πθ/π_ref for chosen and rejected, ``[B]`` each (the policy logps alone if reference-free)."""
        if self.reference_chosen is None:
            return self.policy_chosen, self.policy_rejected
        return self.policy_chosen - self.reference_chosen, self.policy_rejected - self.reference_rejected

    def margin(self) -> jax.Array:
        """h = log πθ/π_ref(y_w) − log πθ/π_ref(y_l), ``[B]``."""
        chosen, rejected = self.log_ratios()
        return chosen - rejected

    def per_token(self, chosen: jax.Array, rejected: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``chosen / |y_w|`` and ``rejected / |y_l|`` (lengths floored at 1), ``[B]`` each."""
        return chosen / jnp.maximum(self.chosen_length, 1.0), rejected / jnp.maximum(self.rejected_length, 1.0)

    def mean_logps(self) -> tuple[jax.Array, jax.Array]:
        """Token-mean policy log-probs (1/|y|)·log πθ(y) of chosen and rejected, ``[B]`` each."""
        return self.per_token(self.policy_chosen, self.policy_rejected)


PairMetrics = Mapping[str, jax.Array]  # metric name → per-pair values [B]
LossResult = jax.Array | tuple[jax.Array, PairMetrics]
LossFn = Callable[..., LossResult]  # fn(logps, cfg) or, with declared params, fn(logps, cfg, params)

_BOUNDS = {
    "gt": (">", lambda v, b: v > b),
    "ge": (">=", lambda v, b: v >= b),
    "lt": ("<", lambda v, b: v < b),
    "le": ("<=", lambda v, b: v <= b),
}


def hyperparameter(
    default: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A params-dataclass field with a default and an allowed range (``gt``: > bound, ``ge``: ≥, ``lt``: <, ``le``: ≤)
    or an allowed set of values (``choices``), checked by :func:`check_params` when the config is validated."""
    bounds = {name: bound for name, bound in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if bound is not None}
    return dataclasses.field(default=default, metadata={"bounds": bounds, "choices": choices})


def params_key(name: str, field: str = "") -> str:
    """The config key of a loss's params section (or one field): ``loss.params.simpo.gamma``; names with dots are
    quoted, as overrides spell them: ``loss.params."pkg.mod:fn".shift``."""
    section = f'loss.params."{name}"' if "." in name else f"loss.params.{name}"
    return f"{section}.{field}" if field else section


def check_params(name: str, params: Any) -> None:
    """Raises ValueError naming ``loss.params.<name>.<field>`` and its allowed range for the first value outside it."""
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        choices = field.metadata.get("choices", ())
        if choices and value not in choices:
            raise ValueError(f"{params_key(name, field.name)} must be one of {', '.join(choices)}, got '{value}'")
        for bound_name, bound in field.metadata.get("bounds", {}).items():
            symbol, holds = _BOUNDS[bound_name]
            if not holds(value, bound):
                raise ValueError(f"{params_key(name, field.name)} must be {symbol} {bound:g}, got {value}")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss and what it needs from the data.

    ``needs_reference``: uses π_ref log-probs (with ``loss.reference: none`` they are taken as 0, i.e. a
    uniform reference). ``needs_soft_label``: reads ``PairLogps.soft_label``, so every training row must
    carry one (see :mod:`jaxspo.data.soft_labels`). ``needs_offset``: reads ``PairLogps.offset``, so the
    batch carries an ``offset`` field (e.g. ``sequential``'s, computed by :mod:`jaxspo.objectives.stage_rows`).
    ``needs_ranking`` (list losses): reads every listed response's rank, so each train row needs a full
    ``ranking``; False: only which response is best, so a row's ``best`` serves (``soft_spo_best_of_n``).
    ``params``: the loss's hyper-parameter dataclass; call the loss through :meth:`apply`, which passes them.
    """

    name: str
    fn: LossFn
    needs_reference: bool
    needs_soft_label: bool
    layout: str = "pair"  # "pair": fn reads PairLogps; "list": fn reads jaxspo.losses.soft_spo.ListLogps (ranked lists)
    needs_offset: bool = False
    needs_ranking: bool = True
    params: type | None = (
        None  # frozen dataclass of the loss's hyper-parameters (section loss.params.<name>); None = none
    )

    def params_of(self, loss_cfg: Any) -> Any:
        """This loss's params from ``loss_cfg.params[name]`` (a params object or a mapping of fields; absent =
        defaults)."""
        section = loss_cfg.params.get(self.name, {})
        return section if isinstance(section, self.params) else self.params(**section)

    def apply(self, logps: Any, loss_cfg: Any) -> LossResult:
        """``fn(logps, loss_cfg)``, or ``fn(logps, loss_cfg, params)`` when the loss declares params."""
        if self.params is None:
            return self.fn(logps, loss_cfg)
        return self.fn(logps, loss_cfg, self.params_of(loss_cfg))


_REGISTRY: dict[str, LossSpec] = {}


def register_loss(
    name: str,
    *,
    needs_reference: bool = True,
    needs_soft_label: bool = False,
    layout: str = "pair",
    needs_offset: bool = False,
    needs_ranking: bool = True,
    params: type | None = None,
) -> Callable[[LossFn], LossFn]:
    """Decorator registering ``fn(logps: PairLogps, cfg: LossConfig) -> loss [B] | (loss [B], metrics)``.

    ``layout="list"``: ``fn`` reads ranked lists (:class:`jaxspo.losses.soft_spo.ListLogps`) instead of pairs.
    ``needs_offset``: ``fn`` reads ``PairLogps.offset`` (every batch then carries an ``offset`` field).
    ``needs_ranking=False`` (a list loss): ``fn`` reads only which response is best (rows may give ``best``).
    ``params``: a frozen dataclass whose fields all have defaults; ``fn`` is then called ``fn(logps, cfg, params)``.
    """
    if params is not None:
        _check_params_class(name, params)

    def decorate(fn: LossFn) -> LossFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"loss '{name}' is already registered by {_REGISTRY[name].fn.__module__}")
        _REGISTRY[name] = LossSpec(
            name, fn, needs_reference, needs_soft_label, layout, needs_offset, needs_ranking, params
        )
        return fn

    return decorate


def _check_params_class(name: str, params: type) -> None:
    """A params class must be a frozen dataclass (hashable, static under jit) with a default for every field."""
    if not (dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen):
        raise ValueError(f"loss '{name}': params must be a @dataclasses.dataclass(frozen=True) class, got {params!r}")
    missing = [
        f.name
        for f in dataclasses.fields(params)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(
            f"loss '{name}': params field(s) {', '.join(missing)} need a default (a loss must run "
            "without a loss.params section)"
        )


def _import_loss(name: str) -> LossSpec:
    """Registers ``"module:function"`` by importing it; ValueError says what is wrong."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"loss '{name}': expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"loss '{name}': cannot import module '{module_name}': {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"loss '{name}': module '{module_name}' has no function '{attr}'")
    decorated = next((spec for spec in _REGISTRY.values() if spec.fn is fn), None)
    flags = (
        {}
        if decorated is None
        else {
            "needs_reference": decorated.needs_reference,
            "needs_soft_label": decorated.needs_soft_label,
            "layout": decorated.layout,
            "needs_offset": decorated.needs_offset,
            "needs_ranking": decorated.needs_ranking,
            "params": decorated.params,
        }
    )
    register_loss(name, **flags)(fn)
    return _REGISTRY[name]


def get_loss(name: str) -> LossSpec:
    """The registered loss ``name``; a ``"module:function"`` name is imported and registered first."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _import_loss(name)
    raise KeyError(f"unknown loss '{name}'; registered: {', '.join(sorted(_REGISTRY))}")


def loss_names() -> list[str]:
    return sorted(_REGISTRY)


def offset_losses(terms: Mapping[str, float]) -> list[str]:
    """The configured loss names that read the per-pair ``offset`` field."""
    return [name for name in terms if get_loss(name).needs_offset]


def ranking_losses(terms: Mapping[str, float]) -> list[str]:
    """The configured list-loss names that read a full ranking of each list (not only its best response)."""
    return [name for name in terms if get_loss(name).needs_ranking]


def soft_label_losses(terms: Mapping[str, float]) -> list[str]:
    """The configured loss names that read per-pair soft labels (so every row must carry one)."""
    return [name for name in terms if get_loss(name).needs_soft_label]
