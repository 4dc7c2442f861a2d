"""Tiny configs and models of every target family: the one factory for the embedded target, the tests and benches.

A tiny config is the shipped tiny target's sizes (:data:`MODEL_CONFIG`), then what its family needs to be a
small but faithful member (:data:`TINY_ARCHITECTURES`: MoE experts, Gated DeltaNet heads, Gemma 4's per-layer
inputs...), then a named variant of the family if asked (Gemma 4's k=v attention, Llama 3's rope scaling), then
the caller's overrides. Which transformers classes build it comes from the family table
(:data:`deepspec.targets.FAMILIES`), which also names the multimodal wrapper some families ship as.

Importing this module needs neither torch nor transformers; the functions import them when called.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable

from deepspec.errors import DeepSpecError

ENDOFTEXT_ID = 0
IM_START_ID = 1
IM_END_ID = 2
MASK_TOKEN_ID = 3  # for parallel drafters; never occurs in training text
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>")  # ids 0..3, in this order
VOCAB_SIZE = 4096


class TinyTargetError(DeepSpecError, ValueError):
    """The tiny target cannot be built as asked; the message says what to change."""


# The shipped tiny target (a Qwen3 of ~3M parameters with the stdlib tokenizer); every family starts from it.
MODEL_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=192,
    intermediate_size=576,
    num_hidden_layers=4,
    num_attention_heads=3,
    num_key_value_heads=1,
    head_dim=64,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    bos_token_id=None,
    eos_token_id=IM_END_ID,
    pad_token_id=ENDOFTEXT_ID,
)


def sizes(*, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate=None, **extra) -> dict:
    """transformers' size keys for a small config, in one line: ``intermediate`` defaults to 2 x ``hidden``;
    ``extra`` keys (vocab_size, tie_word_embeddings, ...) are passed as they are."""
    return dict(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=2 * hidden if intermediate is None else intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        **extra,
    )


@dataclass(frozen=True)
class TinyArchitecture:
    """What a family adds to :data:`MODEL_CONFIG` to be a tiny but faithful member.

    ``extra``: config keys added or replaced (a callable value is computed from the merged keys, so it follows
    the caller's sizes unless the caller sets that key); ``absent``: keys the family's config has no field for,
    never passed; ``variants``: named architectural switches; ``multimodal``: the wrapper config's keys besides
    ``text_config``, from the text config (families with a multimodal class).
    """

    extra: dict = field(default_factory=dict)
    absent: tuple[str, ...] = ()
    variants: dict = field(default_factory=dict)
    multimodal: Callable | None = None


def _tiny_vision(text) -> dict:
    # Qwen3.5's vision tower, one block deep; its output width is the decoder's.
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4)
    return {"vision_config": {**vision, "out_hidden_size": text.hidden_size}}


# Gated DeltaNet (linear attention) layers with full attention every 2nd layer and partial rope (Qwen3.5).
_HYBRID = dict(
    full_attention_interval=2,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
)
_LLAMA3_ROPE = dict(  # Llama 3's frequency scaling, with a context short enough that tiny sequences reach it
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)

# One entry per family of deepspec.targets.FAMILIES (a test checks they match).
TINY_ARCHITECTURES = {
    "qwen3": TinyArchitecture(),
    "llama3": TinyArchitecture(  # no q/k norms
        variants={"rope_scaling": dict(rope_parameters=_LLAMA3_ROPE)},
    ),
    "qwen3_moe": TinyArchitecture(  # a sparse MoE MLP in every layer
        extra=dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1),
    ),
    "qwen3_5": TinyArchitecture(extra=_HYBRID, multimodal=_tiny_vision),
    "qwen3_5_moe": TinyArchitecture(  # the hybrid stack with sparse MoE MLPs and a shared expert, no dense MLP
        extra=dict(
            _HYBRID, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64
        ),
        absent=("intermediate_size",),
        multimodal=_tiny_vision,
    ),
    # Gemma 4: scaled embeddings, per-layer inputs, sliding + full attention layers (the full ones with their own
    # head dim), soft-capped logits; its own per-layer-type rope.
    "gemma4": TinyArchitecture(
        extra=dict(
            rope_parameters=None,
            global_head_dim=lambda kw: kw["head_dim"],
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=lambda kw: kw["vocab_size"],
            sliding_window=8,
            final_logit_softcapping=30.0,
        ),
        # k=v attention on the full-attention layers, with their own kv head count
        variants={"k_eq_v": dict(attention_k_eq_v=True, num_global_key_value_heads=2)},
        multimodal=lambda text: dict(vision_config=None, audio_config=None),
    ),
}


def _tiny(family: str, variant: str | None) -> tuple:
    from deepspec.targets import FAMILIES, family_by_name

    if family not in TINY_ARCHITECTURES:
        raise TinyTargetError(f"no tiny {family!r} target; choose one of {sorted(f.name for f in FAMILIES)}")
    arch = TINY_ARCHITECTURES[family]
    if variant is not None and variant not in arch.variants:
        raise TinyTargetError(f"the tiny {family} target has no variant {variant!r}; it has {sorted(arch.variants)}")
    return family_by_name(family), arch


def make_model_config(*, family: str = "qwen3", variant: str | None = None, multimodal: bool = False, **overrides):
    """A tiny transformers config of ``family`` (a name in :data:`deepspec.targets.FAMILIES`), ``overrides`` last.

    ``variant``: one of the family's :attr:`TinyArchitecture.variants`; ``multimodal``: the family's
    *ForConditionalGeneration config around the text config (Gemma 4, Qwen3.5, Qwen3.5-MoE). ``architectures``
    names the class that builds it (:func:`model_from_config`).
    """
    import transformers

    target_family, arch = _tiny(family, variant)
    merged = {**MODEL_CONFIG, **arch.extra, **arch.variants.get(variant, {}), **overrides}
    # Copies: a config keeps (and may change) the dicts it is given, such as rope_parameters.
    kwargs = {k: copy.deepcopy(v(merged) if callable(v) else v) for k, v in merged.items() if k not in arch.absent}
    config = getattr(transformers, target_family.config_class)(**kwargs)
    config.architectures = [target_family.causal_lm_class]
    if not multimodal:
        return config
    if not target_family.multimodal_class:
        raise TinyTargetError(f"the {family} family has no multimodal class; build it with multimodal=False")
    wrapper = getattr(transformers, target_family.multimodal_config_class)(
        text_config=config.to_dict(), **arch.multimodal(config)
    )
    wrapper.architectures = [target_family.multimodal_class]
    return wrapper


@contextlib.contextmanager
def seeded_rng(seed: int, threads: int | None = None):
    """torch's CPU RNG seeded with ``seed`` (and ``threads`` intra-op threads) inside; the caller's RNG state and
    thread count are restored after."""
    import torch

    prev = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(prev)


def model_from_config(config, *, seed: int = 0, dtype=None, eager: bool = False):
    """The model ``config.architectures[0]`` names, initialised under ``seed`` (the caller's RNG left as it was),
    in eval mode, cast to ``dtype`` if given. ``eager``: transformers' reference attention and MoE kernels (the
    fused ones lack float64)."""
    import transformers

    if eager:
        config._attn_implementation = "eager"
        if getattr(getattr(config, "text_config", None) or config, "num_experts", None):
            config._experts_implementation = "eager"
    with seeded_rng(seed):
        model = getattr(transformers, config.architectures[0])(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def make_model(
    *,
    family: str = "qwen3",
    variant: str | None = None,
    multimodal: bool = False,
    seed: int = 0,
    dtype=None,
    eager: bool = False,
    **overrides,
):
    """:func:`make_model_config` built by :func:`model_from_config`: a tiny random model, the same for the same
    arguments."""
    config = make_model_config(family=family, variant=variant, multimodal=multimodal, **overrides)
    return model_from_config(config, seed=seed, dtype=dtype, eager=eager)
