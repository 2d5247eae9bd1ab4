"""Architecture and numerics of a :class:`jaxspo.models.Decoder`: one config with switches for every port.

The defaults describe a small Llama. With ``path`` set, the trainer replaces every architecture field by
the values mapped from that folder's ``config.json`` (see :mod:`jaxspo.models.hf_config`); only the
numerics (``dtype``, ``param_dtype``, ``remat``) and the paths come from the YAML recipe.
"""

from __future__ import annotations

import dataclasses

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2")
NORMS = ("rmsnorm", "gemma_rmsnorm", "layernorm")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu_new", "gelu")  # HF names; the two tanh GELUs are one function
POSITIONS = ("rope", "learned")
ROPE_TYPES = ("default", "linear", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")
ATTENTION = ("auto", "xla", "chunked", "splash", "cudnn")  # model.attention: the kernels of jaxspo.models.attention
CONTEXT_ATTENTION = (
    "gather",
    "ring",
    "ring_zigzag",
)  # model.context_attention: how attention reaches keys on other time shards
REMAT_POLICIES = ("full", "dots", "dots_no_batch")  # what a rematerialised layer saves (jaxspo.models.decoder)


@dataclasses.dataclass
class RopeScaling:
    """RoPE frequency scaling (HF ``rope_parameters``): ``default`` (none), ``linear``, or Llama 3's ``llama3``."""

    type: str = "default"
    factor: float = 1.0  # linear, llama3: frequencies divided by it (llama3: only the low ones)
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int = 8192  # llama3


@dataclasses.dataclass
class ModelConfig:
    """Architecture switches and numerics. ``head_dim`` 0 means ``hidden_size // num_heads``."""

    arch: str = "llama"  # HF model_type written on export; one of ARCHITECTURES
    path: str = ""  # HF folder (config.json + safetensors + tokenizer) to start the policy from; "" = random init
    reference_path: str = ""  # HF folder of the reference model; "" = the policy's starting point
    vocab_size: int = 0
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0
    max_position_embeddings: int = 2048  # size of the learned position table; recorded in config.json
    positions: str = "rope"  # rope | learned (GPT-2)
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = dataclasses.field(default_factory=RopeScaling)
    norm: str = "rmsnorm"  # rmsnorm (x̂·w) | gemma_rmsnorm (x̂·(1+w)) | layernorm (with bias, GPT-2)
    rms_norm_eps: float = 1e-6  # epsilon of every norm (LayerNorm's too)
    activation: str = "silu"  # MLP non-linearity, by its HF name
    gated_mlp: bool = True  # down(act(gate(x)) · up(x)); False: down(act(up(x))) (GPT-2)
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2, GPT-2)
    out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # biases on the MLP projections (GPT-2)
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys before RoPE (Qwen3)
    post_norms: bool = False  # norms on the attention and MLP outputs too (Gemma 2)
    scale_embeddings: bool = False  # embeddings × sqrt(hidden_size) (Gemma)
    query_pre_attn_scalar: float = 0.0  # scores × query_pre_attn_scalar**-0.5; 0 = head_dim (Gemma 2 sets it)
    attn_softcap: float = 0.0  # scores → c·tanh(scores/c) before masking; 0 = off (Gemma 2)
    final_softcap: float = 0.0  # logits → c·tanh(logits/c); 0 = off (Gemma 2)
    sliding_window: int = 0  # keys per query on sliding_attention layers (query included)
    layer_types: list[str] = dataclasses.field(default_factory=list)  # per layer, LAYER_TYPES; [] = all full
    tie_embeddings: bool = True
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: bool = False
    scan_unroll: int = 1  # layers per iteration of the layer scan: 1 = a rolled loop, >= num_layers = unrolled
    remat_policy: str = (
        "full"  # with remat: "full" saves nothing, "dots" every matmul output, "dots_no_batch" weight matmuls only
    )
    attention: str = (
        "auto"  # attention kernel (jaxspo.models.attention): auto = splash on TPU, cudnn on GPU, else chunked
    )
    attention_block: int = (
        128  # chunked/splash: queries and keys per block (smaller for shorter rows; splash: whole 128s)
    )
    context_attention: str = (
        "gather"  # with mesh.context > 1: gather = all-gather the keys, ring = pass key blocks around (docs/scale.md)
    )
    logprob_chunk: int = 0  # log-probs from logits of this many tokens at a time (rematerialised); 0 = all at once
    init_std: float = 0.02

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer: whether it uses the sliding window (``num_layers`` entries)."""
        types = self.layer_types or ["full_attention"] * self.num_layers
        return tuple(t == "sliding_attention" for t in types)

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        if self.head_dim < 0:
            raise ValueError(f"model.head_dim must be >= 0 (0 = hidden_size // num_heads), got {self.head_dim}")
        if self.head_dim == 0 and self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}) when head_dim is 0"
            )
        if self.positions == "rope" and self.resolved_head_dim % 2:
            raise ValueError(f"model.head_dim must be even for RoPE, got {self.resolved_head_dim}")
        for name, choices in (
            ("arch", ARCHITECTURES),
            ("positions", POSITIONS),
            ("norm", NORMS),
            ("activation", ACTIVATIONS),
            ("attention", ATTENTION),
            ("context_attention", CONTEXT_ATTENTION),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"model.{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.rope_scaling.type not in ROPE_TYPES:
            raise ValueError(f"model.rope_scaling.type must be one of {ROPE_TYPES}, got {self.rope_scaling.type!r}")
        for name in ("rope_theta", "rms_norm_eps", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        for name in ("query_pre_attn_scalar", "attn_softcap", "final_softcap", "sliding_window", "init_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        self._validate_layer_types()
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"model.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if self.scan_unroll < 1:
            raise ValueError(
                f"model.scan_unroll must be >= 1 (1 = a rolled loop over the layers), got {self.scan_unroll}"
            )
        if self.attention_block < 8 or self.attention_block % 8:
            raise ValueError(f"model.attention_block must be a positive multiple of 8, got {self.attention_block}")
        if self.logprob_chunk < 0:
            raise ValueError(f"model.logprob_chunk must be >= 0 (0 = off), got {self.logprob_chunk}")
        import jax.numpy as jnp  # here, not at the top: reading a config imports no jax

        for name in ("dtype", "param_dtype"):
            try:
                floating = jnp.issubdtype(jnp.dtype(getattr(self, name)), jnp.floating)
            except TypeError:
                floating = False
            if not floating:
                raise ValueError(f"model.{name} must be a floating dtype name, got {getattr(self, name)!r}")

    def _validate_layer_types(self) -> None:
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"model.layer_types has {len(self.layer_types)} entries but num_layers is {self.num_layers}"
            )
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ValueError(f"model.layer_types: unknown type {unknown[0]!r}; valid: {LAYER_TYPES}")
        if any(self.sliding_layers) and self.sliding_window <= 0:
            raise ValueError("model.sliding_window must be > 0 when model.layer_types has sliding_attention layers")
