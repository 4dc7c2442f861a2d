"""What differs per target family, and nothing else.

Every stage talks to the frozen target through :class:`Target`: load it,
capture the hidden states of ``target_layer_ids`` plus the post-norm last
hidden state in one forward, and hand out the frozen embedding and LM head.
A family (:class:`TargetFamily`) says where those pieces live inside the
transformers model, which small quirks apply (Gemma's logit soft-capping, the
multimodal wrapper around Gemma 4's text model), its chat facts (end-of-turn
marker, mask token), its transformers classes and whose layers its drafts use.
Adding a family is adding one entry to ``FAMILIES`` (and its tiny sizes to ``deepspec.tiny_models``).

Layer ids: ``i`` is the output of decoder layer ``i`` (0-based), ``-1`` the
embedding output; equal to ``output_hidden_states[i + 1]`` of transformers.
The last layer is never allowed: its output is what the final norm turns into
the last hidden state, which we store separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from deepspec.errors import DeepSpecError
from deepspec.hub import NoSuchFolderError, local_or_hub_id
from deepspec.layer_ids import check_layer_ids


class TargetError(DeepSpecError, ValueError):
    """The target or the requested layers do not fit; the message says what to change."""


def _text_model_plain(model: nn.Module) -> nn.Module:
    return model.model if hasattr(model, "model") else model


def _text_model_multimodal(model: nn.Module) -> nn.Module:
    # google/gemma-4-*-it and Qwen/Qwen3.5-* checkpoints are multimodal (*ForConditionalGeneration): the
    # text decoder sits at model.model.language_model; the *ForCausalLM classes have it at model.model.
    inner = model.model if hasattr(model, "model") else model
    return getattr(inner, "language_model", inner)


@dataclass(frozen=True)
class TargetFamily:
    """One target family: every fact DeepSpec needs about it, and the only place that holds them."""

    name: str
    model_types: tuple[str, ...]
    chat_template: str  # the value of data.chat_template for this family's targets
    mask_token_id: int | None  # the parallel drafters' mask token (a token id that never occurs in text)
    text_model: Callable[[nn.Module], nn.Module]
    # transformers class names: the decoder's config and causal LM, and for families released as multimodal
    # checkpoints the *ForConditionalGeneration wrapper and its config (the decoder's under ``text_config``).
    config_class: str
    causal_lm_class: str
    multimodal_config_class: str = ""
    multimodal_class: str = ""
    # Chat end-of-turn markers: the first closes an assistant turn (in the loss mask; none: the tokenizer's
    # eos_token); any of them stops generation.
    end_of_turn: tuple[str, ...] = ()
    # Whose decoder layers the draft uses: None = its own (``block_module`` / ``block_class_names``); a family
    # name = that family's layers, built from this target's sizes (Llama 3, Qwen3-MoE: Qwen3-style dense
    # layers, the ``Qwen3DSparkModel`` that vLLM serves).
    draft_family: str | None = None
    # The transformers module and class names of the draft's blocks (families drafting with their own layers).
    block_module_name: str = ""
    block_class_names: dict = field(default_factory=dict)
    # Checkpoint (safetensors) names of the frozen pieces, first match wins.
    embed_keys: tuple[str, ...] = ("model.embed_tokens.weight",)
    lm_head_keys: tuple[str, ...] = ("lm_head.weight",)
    # Decoder layers with sandwich norms (Gemma): post_attention_layernorm normalises the attention
    # output, pre/post_feedforward_layernorm wrap the MLP, and a layer_scalar buffer scales the output.
    sandwich_norms: bool = False
    # Config keys transformers folds into ``per_layer_config`` that the public release and vLLM read flat:
    # flat key -> the per-layer key of the first (full-attention) draft layer it is written from.
    flat_per_layer_keys: dict = field(default_factory=dict)
    # Layer types whose state is a recurrence, not a KV cache (Qwen3.5's Gated DeltaNet "linear_attention"):
    # a rejected token cannot be masked out of it, so decoding restores the state per row
    # (deepspec.decoding.recurrent). Capture works on any layer type.
    recurrent_layer_types: tuple[str, ...] = ()
    # The draft MLP width for targets without a dense ``intermediate_size`` (MoE-only stacks), from the
    # target's text config; None = the target's ``intermediate_size``.
    draft_intermediate_size: Callable | None = None

    def text_config(self, config):
        """The decoder's config (multimodal configs keep it under ``text_config``)."""
        return getattr(config, "text_config", None) or config

    def block_module(self):
        import importlib

        if not self.block_module_name:
            raise TargetError(
                f"the {self.name} family drafts with {self.draft_family} layers; it has no blocks of its own"
            )
        return importlib.import_module(self.block_module_name)

    def drafting_family(self) -> "TargetFamily":
        """The family whose layers and config class the draft uses (itself unless ``draft_family``)."""
        return family_by_name(self.draft_family) if self.draft_family else self

    def recurrent_layers(self, config) -> list[int]:
        """Indices of the decoder layers that keep a recurrent state (empty for pure-attention targets)."""
        types = getattr(self.text_config(config), "layer_types", None) or ()
        return [i for i, t in enumerate(types) if t in self.recurrent_layer_types]

    def end_of_turn_marker(self, tokenizer) -> str | None:
        return self.end_of_turn[0] if self.end_of_turn else getattr(tokenizer, "eos_token", None)


# What Qwen3.5 and Qwen3.5-MoE share (one tokenizer, one layout, the same hybrid stack).
_QWEN3_5 = dict(
    chat_template="qwen3_5",  # the tokenizer's own template; turns close with <|im_end|> (248046)
    mask_token_id=248319,  # the last embedding row (248,320 rows): a padding row no text ever uses
    text_model=_text_model_multimodal,
    end_of_turn=("<|im_end|>",),
    draft_family="qwen3",
    # Multimodal (*ForConditionalGeneration, the released checkpoints) first, then text-only.
    embed_keys=("model.language_model.embed_tokens.weight", "model.embed_tokens.weight"),
    recurrent_layer_types=("linear_attention",),
)

FAMILIES = (
    TargetFamily(
        name="qwen3",
        model_types=("qwen3",),
        chat_template="qwen3",
        mask_token_id=151669,  # first unused row after Qwen3's 151,669 tokenizer entries
        text_model=_text_model_plain,
        config_class="Qwen3Config",
        causal_lm_class="Qwen3ForCausalLM",
        end_of_turn=("<|im_end|>",),
        block_module_name="transformers.models.qwen3.modeling_qwen3",
        block_class_names=dict(
            attention="Qwen3Attention",
            mlp="Qwen3MLP",
            norm="Qwen3RMSNorm",
            rotary="Qwen3RotaryEmbedding",
            layer="Qwen3DecoderLayer",
        ),
    ),
    TargetFamily(
        name="gemma4",
        model_types=("gemma4", "gemma4_text"),
        chat_template="gemma4",
        mask_token_id=4,  # Gemma's reserved <mask> token
        text_model=_text_model_multimodal,
        config_class="Gemma4TextConfig",
        causal_lm_class="Gemma4ForCausalLM",
        multimodal_config_class="Gemma4Config",
        multimodal_class="Gemma4ForConditionalGeneration",
        end_of_turn=("<turn|>", "<end_of_turn>"),
        block_module_name="transformers.models.gemma4.modeling_gemma4",
        block_class_names=dict(
            attention="Gemma4TextAttention",
            mlp="Gemma4TextMLP",
            norm="Gemma4RMSNorm",
            rotary="Gemma4TextRotaryEmbedding",
            layer="Gemma4TextDecoderLayer",
        ),
        # Multimodal (Gemma4ForConditionalGeneration) first, then text-only (Gemma4ForCausalLM).
        embed_keys=("model.language_model.embed_tokens.weight", "model.embed_tokens.weight"),
        lm_head_keys=("lm_head.weight",),
        sandwich_norms=True,
        # transformers >= 5.16 keeps the full-attention head dim / kv heads only in per_layer_config;
        # DeepSpec's release (transformers 5.10) and vLLM read the flat keys.
        flat_per_layer_keys={"global_head_dim": "head_dim", "num_global_key_value_heads": "num_key_value_heads"},
    ),
    TargetFamily(
        name="llama3",
        model_types=("llama",),
        chat_template="llama3",
        mask_token_id=128002,  # <|reserved_special_token_0|>: reserved, never in text
        text_model=_text_model_plain,
        config_class="LlamaConfig",
        causal_lm_class="LlamaForCausalLM",
        end_of_turn=("<|eot_id|>",),
        draft_family="qwen3",  # Llama has no q/k norms; the draft is a Qwen3-style layer of Llama's sizes
    ),
    TargetFamily(
        name="qwen3_moe",
        model_types=("qwen3_moe",),
        chat_template="qwen3",  # Qwen3's tokenizer and template
        mask_token_id=151669,
        text_model=_text_model_plain,
        config_class="Qwen3MoeConfig",
        causal_lm_class="Qwen3MoeForCausalLM",
        end_of_turn=("<|im_end|>",),
        draft_family="qwen3",  # a dense draft: Qwen3 layers with the target's dense intermediate_size
    ),
    # Qwen3.5: Gated DeltaNet (linear attention) layers with a full-attention layer every 4th. The draft is a
    # dense full-attention Qwen3 layer of the target's sizes (vLLM serves it as Qwen3DSparkModel).
    TargetFamily(
        name="qwen3_5",
        model_types=("qwen3_5", "qwen3_5_text"),
        config_class="Qwen3_5TextConfig",
        causal_lm_class="Qwen3_5ForCausalLM",
        multimodal_config_class="Qwen3_5Config",
        multimodal_class="Qwen3_5ForConditionalGeneration",
        **_QWEN3_5,
    ),
    TargetFamily(
        name="qwen3_5_moe",
        model_types=("qwen3_5_moe", "qwen3_5_moe_text"),
        config_class="Qwen3_5MoeTextConfig",
        causal_lm_class="Qwen3_5MoeForCausalLM",
        multimodal_config_class="Qwen3_5MoeConfig",
        multimodal_class="Qwen3_5MoeForConditionalGeneration",
        # No dense MLP in the target: the draft's MLP is as wide as the target's active one per token
        # (the routed experts a token uses plus the shared expert).
        draft_intermediate_size=lambda text: (
            int(text.moe_intermediate_size) * int(text.num_experts_per_tok) + int(text.shared_expert_intermediate_size)
        ),
        **_QWEN3_5,
    ),
)


def family_by_name(name: str) -> TargetFamily:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise TargetError(f"unknown target family {name!r}; known: {[f.name for f in FAMILIES]}")


def family_by_chat_template(chat_template: str) -> TargetFamily | None:
    return next((f for f in FAMILIES if f.chat_template == chat_template), None)


def family_of(config) -> TargetFamily:
    """The family of a transformers config, or a clear error listing the supported ones."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise TargetError(f"unsupported target model_type {model_type!r}; supported: {supported}")


def validate_layer_ids(layer_ids: Sequence[int], *, num_layers: int) -> list[int]:
    """Strictly increasing ids in [-1, num_layers - 2]; the last layer is never captured (:mod:`deepspec.layer_ids`)."""
    return check_layer_ids(layer_ids, num_layers=num_layers, error=TargetError)


@dataclass
class CapturedStates:
    """One target forward's features: ``hidden_states`` [B, T, n_layers*H], ``last_hidden_state`` [B, T, H]."""

    hidden_states: torch.Tensor
    last_hidden_state: torch.Tensor


class Target:
    """A frozen target LLM seen through its family adapter."""

    def __init__(self, model: nn.Module, tokenizer=None, *, family: TargetFamily | None = None):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.family = family or family_of(model.config)
        self.config = self.family.text_config(model.config)
        self.decoder = self.family.text_model(model)

    # -- facts ------------------------------------------------------------------------------
    @property
    def name_or_path(self) -> str:
        return getattr(self.model.config, "_name_or_path", "") or ""

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def embed_tokens(self) -> nn.Module:
        return self.decoder.embed_tokens

    @property
    def final_norm(self) -> nn.Module:
        return self.decoder.norm

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def validate_layer_ids(self, layer_ids: Sequence[int]) -> list[int]:
        return validate_layer_ids(layer_ids, num_layers=self.num_layers)

    # -- compute ----------------------------------------------------------------------------
    def logits(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """Target logits from the post-norm last hidden state (LM head + family soft-cap)."""
        logits = self.lm_head(last_hidden_state)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:  # Gemma: cap * tanh(logits / cap)
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.no_grad()
    def capture(
        self,
        input_ids: torch.Tensor,
        *,
        layer_ids: Sequence[int],
        attention_mask: torch.Tensor | None = None,
    ) -> CapturedStates:
        """One forward of the text decoder; hooks keep only the requested layers' outputs."""
        return self.forward_with_capture(input_ids, layer_ids=layer_ids, attention_mask=attention_mask)

    @torch.no_grad()
    def forward_with_capture(
        self,
        input_ids: torch.Tensor,
        *,
        layer_ids: Sequence[int],
        attention_mask=None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
    ) -> CapturedStates:
        """:meth:`capture` with a KV cache (decoding): ``attention_mask`` may be a prepared 4D mask or a
        dict of them per layer type, ``past_key_values`` a transformers cache that grows in place."""
        ids = self.validate_layer_ids(layer_ids)
        captured: dict[int, torch.Tensor] = {}

        def keep(layer_id: int):
            def hook(_module, _inputs, output):
                captured[layer_id] = output[0] if isinstance(output, (tuple, list)) else output

            return hook

        handles = [(self.embed_tokens if i == -1 else self.layers[i]).register_forward_hook(keep(i)) for i in ids]
        try:
            out = self.decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=past_key_values is not None,
            )
        finally:
            for handle in handles:
                handle.remove()
        hidden = torch.cat([captured[i] for i in ids], dim=-1)
        return CapturedStates(hidden_states=hidden, last_hidden_state=out.last_hidden_state)


def load_target_config(name_or_path: str):
    """The target's transformers config (hub id or local folder), or a clear :class:`TargetError`."""
    from transformers import AutoConfig

    text = str(name_or_path)
    try:
        local_or_hub_id(text, what="target")
    except NoSuchFolderError:  # neither a folder nor a hub id: transformers would blame the "repo id" form
        raise TargetError(
            f"target folder {text!r} does not exist; check model.target_model_name_or_path "
            "(for the tiny local target run: python scripts/data/build_tiny_target.py)"
        ) from None
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except OSError as exc:
        raise TargetError(
            f"cannot load target {name_or_path!r}: {exc}\n"
            "For the tiny local target run: python scripts/data/build_tiny_target.py"
        ) from exc


def load_target(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    with_tokenizer: bool = True,
) -> Target:
    """Load a target (hub id or local folder) with its tokenizer, frozen, in eval mode.

    Local folders (the tiny target) never touch the network; hub ids download as
    transformers usually does, which is the only network use in DeepSpec.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = load_target_config(name_or_path)
    family = family_of(config)
    if attn_implementation is None:
        attn_implementation = "sdpa" if torch.device(device).type == "cuda" else "eager"
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, attn_implementation=attn_implementation).to(
        device
    )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path) if with_tokenizer else None
    return Target(model, tokenizer, family=family)
