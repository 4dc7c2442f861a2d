"""Family-agnostic pieces shared by every draft: layers built from the family's classes.

A draft layer is a pre-norm block (``input_layernorm`` -> attention -> residual,
``post_attention_layernorm`` -> MLP -> residual) whose norm, MLP, attention
projections/q-k norms/scaling and rotary embedding are the target family's own
transformers classes (``TargetFamily.block_class_names``). Only the attention
*computation* is ours, because drafts attend over keys that are not their own
queries (context features, earlier TTT steps).

Family facts are read from the family's modules, never restated here: the
attention scaling (``attn.scaling``; Gemma 4 uses 1.0), the optional value norm
(Gemma 4 ``v_norm``), the embedding scale (Gemma's scaled word embedding, read
from the family's text model built on the meta device), logit soft-capping
(``final_logit_softcapping`` in the config) and weight init (the family's
``_init_weights``).
"""

from __future__ import annotations

import inspect
import sys
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from deepspec.draft_specs import ATTENTION_BACKENDS
from deepspec.models.loading import DraftLoadError
from deepspec.targets import TargetError, TargetFamily, family_of


def _accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def family_classes(family: TargetFamily) -> dict[str, type]:
    module = family.block_module()
    return {role: getattr(module, name) for role, name in family.block_class_names.items()}


def family_text_model_class(config) -> type:
    """The family's decoder class (``Qwen3Model``, ``Gemma4TextModel``) for its embedding and init."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    family = family_of(config)
    return getattr(family.block_module(), MODEL_MAPPING_NAMES[config.model_type])


def family_probe(config) -> nn.Module:
    """The family's text model built on the meta device (no memory, no weights).

    Drafts read family facts from it: the word-embedding scale and the weight init.
    """
    with torch.device("meta"):
        return family_text_model_class(config)(config)


def family_embed_scale(probe: nn.Module) -> float:
    """The factor the family's word embedding applies (Gemma: sqrt(hidden); others 1)."""
    emb = probe.get_input_embeddings()
    scale = getattr(emb, "scalar_embed_scale", None)  # transformers keeps the float next to its (meta) buffer
    return float(scale) if scale is not None else 1.0


def build_norm(family: TargetFamily, config, dim: int) -> nn.Module:
    return family_classes(family)["norm"](dim, eps=config.rms_norm_eps)


def build_mlp(family: TargetFamily, config, layer_idx: int) -> nn.Module:
    cls = family_classes(family)["mlp"]
    return cls(config, layer_idx) if _accepts(cls.__init__, "layer_idx") else cls(config)


def build_attention(family: TargetFamily, config, layer_idx: int, *, in_features: int | None = None) -> nn.Module:
    """The family attention module (projections, q/k/v norms, scaling); ``in_features`` widens q/k/v inputs.

    A module without ``v_proj`` is Gemma 4's k=v attention (``attention_k_eq_v``): values are the
    key projection before the key norm (see :func:`project_kv`).
    """
    attn = family_classes(family)["attention"](config, layer_idx)
    if getattr(attn, "k_proj", None) is None:
        raise ValueError(
            f"{type(attn).__name__} layer {layer_idx} has no own k projection (a KV-shared layer); "
            "draft configs must set num_kv_shared_layers=0"
        )
    if in_features is not None and in_features != attn.q_proj.in_features:
        bias = config.attention_bias
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(attn, name)
            if old is not None:
                setattr(attn, name, nn.Linear(in_features, old.out_features, bias=bias))
    return attn


def build_rotary(family: TargetFamily, config) -> nn.Module:
    return family_classes(family)["rotary"](config=config)


def rotary_cos_sin(rotary: nn.Module, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str):
    """``cos, sin`` [B, L, head_dim] for ``position_ids`` [B, L] (Gemma's rotary also takes a layer type)."""
    if _accepts(type(rotary).forward, "layer_type"):
        return rotary(x, position_ids, layer_type)
    return rotary(x, position_ids)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, d]; cos/sin [B, L, d] (the rotate-half convention both families use)."""
    cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend {backend!r}: choose one of {ATTENTION_BACKENDS}")
    if backend == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return backend


def project_q(attn: nn.Module, q_in: torch.Tensor, q_pos) -> torch.Tensor:
    """Queries [B, h, Lq, d] from ``q_in`` with the family's q-norm and rope ``q_pos`` = (cos, sin)."""
    q = attn.q_proj(q_in).view(*q_in.shape[:-1], -1, attn.head_dim)
    q = attn.q_norm(q) if getattr(attn, "q_norm", None) is not None else q  # families without q/k norms
    return apply_rope(q, *q_pos).transpose(1, 2)


def project_kv(attn: nn.Module, kv_in: torch.Tensor, kv_pos) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values [B, hkv, Lk, d] from ``kv_in`` with the family's norms and rope (cacheable at decode time)."""
    d = attn.head_dim
    k_raw = attn.k_proj(kv_in).view(*kv_in.shape[:-1], -1, d)
    v = k_raw if attn.v_proj is None else attn.v_proj(kv_in).view(*kv_in.shape[:-1], -1, d)  # k=v attention
    k = attn.k_norm(k_raw) if getattr(attn, "k_norm", None) is not None else k_raw
    v_norm = getattr(attn, "v_norm", None)
    if v_norm is not None:
        v = v_norm(v)
    return apply_rope(k, *kv_pos).transpose(1, 2), v.transpose(1, 2)


def project_qkv(attn: nn.Module, q_in: torch.Tensor, kv_in: torch.Tensor, q_pos, kv_pos):
    """Queries from ``q_in``, keys/values from ``kv_in``, each with the family's norms and rope.

    ``q_pos`` / ``kv_pos`` are ``(cos, sin)`` pairs. Returns q [B, h, Lq, d], k/v [B, hkv, Lk, d].
    """
    return (project_q(attn, q_in, q_pos), *project_kv(attn, kv_in, kv_pos))


def attend(q, k, v, *, scale: float, mask, backend: str) -> torch.Tensor:
    """Attention of q [B, h, Lq, d] over k/v [B, hkv, Lk, d] (grouped heads allowed).

    ``mask``: a bool tensor [B, Lq, Lk] (True = may attend) for ``sdpa``/``eager``, or a flex
    ``BlockMask`` for ``flex``. Returns [B, Lq, h*d].
    """
    B, h, Lq, d = q.shape
    if backend == "flex":
        out = flex_kernel()(q, k, v, block_mask=mask, scale=scale, enable_gqa=k.shape[1] != h)
    elif backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scale, enable_gqa=k.shape[1] != h)
    elif backend == "eager":
        rep = h // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)).to(torch.promote_types(q.dtype, torch.float32)) * scale
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        out = scores.softmax(dim=-1).to(v.dtype) @ v
    else:
        raise ValueError(f"attention backend {backend!r} is not resolved; call resolve_backend first")
    return out.transpose(1, 2).reshape(B, Lq, h * d)


_FLEX = {}


def flex_kernel() -> Callable:
    """flex attention, compiled once per process (only compiled is it fast and memory-lean).

    Sequence and key lengths vary from batch to batch, and Eagle3's TTT step s attends (s+1)·T keys. Compiled
    per shape (``dynamic=False``), one batch length already takes 7 graphs and a second reaches dynamo's
    recompile limit (8), past which flex silently runs uncompiled. With automatic dynamic shapes a length
    that changes is recompiled once as a symbol, so the graphs stay few whatever the lengths (Eagle3 at 3
    lengths below 128 tokens: 5, each a one-off: the first change of a length and the first mask of more
    than one 128-token block). Mask functions must capture lengths as tensors, never Python ints: an int is
    guarded by value, a recompile per length. (``dynamic=True`` is not used: torch 2.13's CPU code generator
    fails on DSpark's block mask with every size symbolic.) ``DEEPSPEC_FLEX_EAGER=1``: the uncompiled kernel
    (debugging; its CPU forward needs no C++ build).
    """
    from torch.nn.attention.flex_attention import flex_attention

    if os.environ.get("DEEPSPEC_FLEX_EAGER"):
        return flex_attention
    if "compiled" not in _FLEX:
        _FLEX["compiled"] = torch.compile(flex_attention)
    return _FLEX["compiled"]


def make_flex_mask(mask_mod, *, batch: int, q_len: int, kv_len: int, device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, B=batch, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)


class DraftLayer(nn.Module):
    """One draft block: family norms + family attention parameters + family MLP.

    Qwen-style (pre-norm): ``x + attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``.
    Sandwich norms (``TargetFamily.sandwich_norms``, Gemma 4, as the family's own decoder layer):
    ``x + post_attention_layernorm(attn(input_layernorm(x)))``, then
    ``x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))``, times ``layer_scalar``.
    ``fused_input`` (Eagle3): the attention input is ``[input_layernorm(embeds) ; hidden_norm(x)]``
    (2·H wide q/k/v projections); the residual stream stays the un-normalised ``x``.

    :meth:`forward` runs the block; the draft passes the attention computation itself (``attention(self_attn,
    attn_in)`` -> [B, L, heads*d], before ``o_proj``: :func:`project_qkv` + :func:`attend`) because its
    keys/values are not just its own queries' inputs. Every use goes through ``forward``, so FSDP2 (which
    gathers a layer's sharded weights in the hooks around ``forward``) sees each layer as one unit.
    """

    def __init__(self, family: TargetFamily, config, layer_idx: int, *, fused_input: bool = False):
        super().__init__()
        H = config.hidden_size
        self.self_attn = build_attention(family, config, layer_idx, in_features=2 * H if fused_input else None)
        self.mlp = build_mlp(family, config, layer_idx)
        if fused_input:
            self.hidden_norm = build_norm(family, config, H)
        self.input_layernorm = build_norm(family, config, H)
        self.post_attention_layernorm = build_norm(family, config, H)
        self.sandwich = family.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = build_norm(family, config, H)
            self.post_feedforward_layernorm = build_norm(family, config, H)
            self.register_buffer("layer_scalar", torch.ones(1))

    def forward(
        self,
        x: torch.Tensor,
        *,
        attention: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attn_in = self.attention_input(x, embeds)
        return self.mlp_block(self.add_attention(x, self.self_attn.o_proj(attention(self.self_attn, attn_in))))

    def attention_input(self, x: torch.Tensor, embeds: torch.Tensor | None = None) -> torch.Tensor:
        if hasattr(self, "hidden_norm"):
            return torch.cat([self.input_layernorm(embeds), self.hidden_norm(x)], dim=-1)
        return self.input_layernorm(x)

    def add_attention(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The residual update with the attention output (already through ``o_proj``)."""
        return x + (self.post_attention_layernorm(attn_out) if self.sandwich else attn_out)

    def mlp_block(self, h: torch.Tensor) -> torch.Tensor:
        if self.sandwich:
            h = h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
            return h * self.layer_scalar.to(h.dtype)
        return h + self.mlp(self.post_attention_layernorm(h))


class DraftPreTrainedModel(PreTrainedModel):
    """Common base: family lookup, frozen target embedding / LM head, family init, draft-aware loading."""

    base_model_prefix = ""
    _supports_sdpa = True
    _supports_flex_attn = True
    _no_split_modules = ["DraftLayer"]
    _family_classes: dict[str, type] = {}  # architecture name -> class, filled by register()
    _architecture_classes: dict[str, type] = {}  # draft architecture ("DSpark") -> its generic class
    draft_architecture: str = ""  # set by each generic draft class; registers it (__init_subclass__)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "draft_architecture" in cls.__dict__:  # a generic class (not a per-family copy of one)
            DraftPreTrainedModel._architecture_classes[cls.draft_architecture] = cls

    @classmethod
    def architecture_class(cls, architecture: str) -> type:
        """The generic draft class of a draft architecture (``DSpark`` -> ``DSparkDraftModel``)."""
        try:
            return DraftPreTrainedModel._architecture_classes[architecture]
        except KeyError:
            known = tuple(DraftPreTrainedModel._architecture_classes)
            raise DraftLoadError(f"no draft class for architecture {architecture!r}; known: {known}") from None

    @classmethod
    def register(cls, architecture: str, base: type) -> type:
        """A named subclass per family, so ``save_pretrained`` writes the public architecture name."""
        sub = type(architecture, (base,), {"__module__": base.__module__, "__qualname__": architecture})
        DraftPreTrainedModel._family_classes[architecture] = sub
        setattr(sys.modules[base.__module__], architecture, sub)  # importable by name, so drafts pickle
        return sub

    def __new__(cls, config=None, *args, **kwargs):  # config=None: copy/pickle call __new__(cls) bare
        # DSparkDraftModel(config) returns Qwen3DSparkModel / Gemma4DSparkModel etc., so checkpoints
        # always carry the public architecture name.
        arch = (getattr(config, "architectures", None) or [None])[0]
        target = DraftPreTrainedModel._family_classes.get(arch)
        if target is None and arch and cls is not DraftPreTrainedModel and cls.__name__ != arch:
            target = DraftPreTrainedModel.register(arch, cls)  # a family x architecture not named up front
        if target is not None and issubclass(target, cls) and target is not cls:
            cls = target
        return super().__new__(cls)

    def _setup_family(self, config) -> TargetFamily:
        config.validate_draft()
        family = family_of(config)
        self.family = family
        probe = family_probe(config)
        self.embed_scale = family_embed_scale(probe)
        self.__dict__["_family_probe"] = probe  # plain attribute: not a submodule, never saved
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        return family

    def _freeze_target_pieces(self) -> None:
        # Embedding and LM head are the target's, frozen (never trained, never in the optimizer).
        self.embed_tokens.weight.requires_grad_(False)
        self.lm_head.weight.requires_grad_(False)

    def _init_weights(self, module):
        # The family's own init (norm weights, rotary buffers, ...); it only reads config + module.
        self._family_probe._init_weights(module)
        if isinstance(module, DraftLayer) and module.sandwich:
            with torch.no_grad():
                module.layer_scalar.fill_(1.0)  # the family inits its own layer class only

    def load_target_weights(self, target) -> None:
        """Copy the frozen target embedding and LM head (a :class:`deepspec.targets.Target`)."""
        self.load_frozen_weights(embed=target.embed_tokens.weight, lm_head=target.lm_head.weight)

    @torch.no_grad()
    def load_frozen_weights(self, *, embed: torch.Tensor, lm_head: torch.Tensor) -> None:
        """Copy the frozen target embedding and LM head weights (e.g. ``load_frozen_target_pieces``)."""
        for mine, theirs, name in ((self.embed_tokens, embed, "embedding"), (self.lm_head, lm_head, "LM head")):
            if mine.weight.shape != theirs.shape:
                raise TargetError(
                    f"target {name} shape {tuple(theirs.shape)} != draft "
                    f"{tuple(mine.weight.shape)}; "
                    "build the draft config from this target (draft_config_from_target)"
                )
            mine.weight.copy_(theirs)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids) * self.embed_scale

    def base_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head + the family's final soft-cap (same as ``Target.logits``)."""
        logits = self.lm_head(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.no_grad()
    def target_logits(self, target_last_hidden: torch.Tensor) -> torch.Tensor:
        """Target logits from the cached post-norm last hidden state (frozen LM head is the target's)."""
        return self.base_logits(target_last_hidden.to(self.lm_head.weight.dtype))

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *,
        config=None,
        dtype=None,
        torch_dtype=None,
        device=None,
        reader=None,
    ):
        """Load a draft folder (or hub id) strictly: every tensor must fit (see :mod:`deepspec.models.loading`).

        The config is rebuilt as a draft config of the right family and kind; ``cls`` may be the
        generic class (``DSparkDraftModel``) or a per-family name (``Qwen3DSparkModel``). ``reader``
        (folder -> (config dict, tensors)) reads the folder; the default reads our layout, and a
        loader above the models passes one for other layouts (``deepspec.export.load_any_draft``).
        """
        from deepspec.models.draft_config import draft_config_from_dict
        from deepspec.models.loading import load_state_strict, read_draft_folder, resolve_draft_folder

        folder = resolve_draft_folder(pretrained_model_name_or_path)
        config_dict, state = (reader or read_draft_folder)(folder)
        config = config if config is not None else draft_config_from_dict(config_dict)
        arch = (config.architectures or [None])[0]
        model_cls = DraftPreTrainedModel._family_classes.get(arch)
        if model_cls is None:  # no (known) architecture name: the architecture's generic class
            model_cls = DraftPreTrainedModel.architecture_class(config.draft_architecture)
        if not issubclass(model_cls, cls):
            raise DraftLoadError(
                f"{pretrained_model_name_or_path} holds a {arch}, not a {cls.__name__}; "
                "use deepspec.models.load_draft to load any draft"
            )
        model = model_cls(config)
        load_state_strict(model, state, source=str(pretrained_model_name_or_path))
        dtype = dtype or torch_dtype
        if dtype is not None or device is not None:
            model = model.to(device=device, dtype=dtype)
        model._freeze_target_pieces()
        return model
