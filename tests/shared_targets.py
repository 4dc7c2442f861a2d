"""The tiny targets (and drafts) several test files share, each group at the sizes its tests depend on.

Every one comes from :mod:`deepspec.tiny_models`, the one factory; a group names only the sizes it sets and
what each family changes in them.

- decoding (test_decoding, test_recurrent_target): every family in float64 with eager kernels and a sharpened
  LM head, and the drafts decoded against them;
- capture (test_targets, test_frozen_pieces): every family and the multimodal wrappers;
- draft math (test_models_dspark, test_models_eagle3): the target configs the drafts are sized from;
- export (test_vllm_loader, test_speculators_format, test_export_draft): the targets exported drafts are
  checked against, and a draft checkpoint saved as training saves it.
"""

from pathlib import Path

import torch

from deepspec.models import build_draft, draft_config_from_target
from deepspec.targets import Target
from deepspec.tiny_models import make_model, make_model_config, sizes
from references import H, V

# Qwen3.5's Gated DeltaNet heads in these tests (the tiny default is 16 wide).
HYBRID_HEADS = dict(linear_key_head_dim=8, linear_value_head_dim=8)

# ----------------------------------------------------------------------------- decoding

DECODING_SIZES = sizes(
    layers=3,
    hidden=32,
    heads=2,
    kv_heads=1,
    head_dim=16,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    pad_token_id=0,
    eos_token_id=1,
)
DECODING_FAMILIES = {  # family -> what it changes in DECODING_SIZES
    "qwen3": {},
    "gemma4": dict(num_hidden_layers=4, global_head_dim=16, sliding_window=6, tie_word_embeddings=True),
    "llama3": dict(variant="rope_scaling"),  # no q/k norms; the draft is a Qwen3-style layer of its sizes
    "qwen3_moe": dict(moe_intermediate_size=16),  # a sparse MoE target, a dense draft
    # Gated DeltaNet layers (a recurrent state, rolled back per row) between full-attention layers
    "qwen3_5": dict(num_hidden_layers=4, **HYBRID_HEADS),
    # and with sparse MoE MLPs: the draft is dense (MLP width = the active experts')
    "qwen3_5_moe": dict(
        num_hidden_layers=4, moe_intermediate_size=16, shared_expert_intermediate_size=16, **HYBRID_HEADS
    ),
}
DECODING_ALGOS = {
    "dspark": dict(markov_rank=8, confidence_head_alpha=1.0, confidence_head_with_markov=True),
    "dspark_rnn": dict(algorithm="dspark", markov_rank=8, markov_head_type="rnn", confidence_head_alpha=1.0),
    "dflash": dict(),
    "dflash_engine_layout": dict(algorithm="dflash", sample_from_anchor=False),  # slot 0 = the bonus token
    "eagle3": dict(),
}


def decoding_target(family: str, vocab: int, *, sharpen: float = 30.0, seed: int = 0) -> Target:
    """A float64 target with eager kernels. Random init is near-uniform: the LM head is scaled by ``sharpen`` so
    drafts and target really differ (not Gemma 4's, whose logits are soft-capped)."""
    sizes = {**DECODING_SIZES, **DECODING_FAMILIES[family]}
    model = make_model(family=family, seed=seed, dtype=torch.float64, eager=True, vocab_size=vocab, **sizes)
    if family != "gemma4":
        with torch.no_grad():
            model.lm_head.weight.mul_(sharpen)
    return Target(model)


def decoding_draft(target: Target, algo: str, *, gamma: int = 4, seed: int = 1, **overrides):
    """A float64 draft of ``algo`` (a key of DECODING_ALGOS, ``overrides`` on top) on ``target``'s layers 0 and 1,
    its frozen pieces loaded; confidences spread so that thresholds and schedulers vary the proposal lengths."""
    torch.manual_seed(seed)
    extra = dict(DECODING_ALGOS[algo], **overrides)
    model_cfg = dict(
        algorithm=extra.pop("algorithm", algo),
        num_draft_layers=1 if algo == "eagle3" else 2,
        target_layer_ids=[0, 1],
        block_size=gamma + (0 if extra.get("sample_from_anchor", True) else 1),  # gamma drafts in either layout
        mask_token_id=target.vocab_size - 1,
        ttt_length=gamma,
        **extra,
    )
    config = draft_config_from_target(target.model.config, model_cfg)
    draft = build_draft(config).double().eval()
    draft.load_target_weights(target)
    if getattr(draft, "confidence_head", None) is not None:
        with torch.no_grad():
            draft.confidence_head.proj.weight.mul_(40)
    return draft


# ----------------------------------------------------------------------------- capture

CAPTURE_VOCAB = 128
CAPTURE_SIZES = sizes(layers=5, hidden=64, heads=2, kv_heads=1, head_dim=32, vocab_size=CAPTURE_VOCAB)
_GEMMA4 = dict(family="gemma4", num_hidden_layers=6, global_head_dim=32)  # sliding + full layers, soft-cap
CAPTURE_MODELS = {  # name -> what it changes in CAPTURE_SIZES
    "qwen3": dict(family="qwen3"),
    "qwen3_untied": dict(family="qwen3", tie_word_embeddings=False),
    "gemma4_text": _GEMMA4,
    "gemma4_multimodal": dict(_GEMMA4, multimodal=True),
    "llama3": dict(family="llama3", variant="rope_scaling", tie_word_embeddings=False),
    "qwen3_moe": dict(family="qwen3_moe", moe_intermediate_size=32),
    "qwen3_5": dict(family="qwen3_5", **HYBRID_HEADS),  # Gated DeltaNet layers 0, 2, 4; full attention 1, 3
    "qwen3_5_multimodal": dict(family="qwen3_5", multimodal=True, **HYBRID_HEADS),  # the released checkpoints' class
    "qwen3_5_moe": dict(
        family="qwen3_5_moe", moe_intermediate_size=16, shared_expert_intermediate_size=16, **HYBRID_HEADS
    ),
}


def capture_model(name: str):
    """A float32 model of CAPTURE_MODELS[name], seed 0, in eval mode."""
    return make_model(**{**CAPTURE_SIZES, **CAPTURE_MODELS[name]})


# ----------------------------------------------------------------------------- draft math

_DRAFT_GEMMA4 = dict(family="gemma4", num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1)
DRAFT_MATH_TARGETS = {  # name -> the target's family and sizes (vocab V, hidden H)
    "qwen3": dict(family="qwen3", num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2),
    # Gemma 4: full-attention layers with their own head dim (global_head_dim != head_dim)
    "gemma4": dict(_DRAFT_GEMMA4, global_head_dim=8),
    "gemma4_k_eq_v": dict(_DRAFT_GEMMA4, global_head_dim=8, variant="k_eq_v"),
}


def draft_math_target_config(name: str):
    return make_model_config(vocab_size=V, hidden_size=H, intermediate_size=64, head_dim=16, **DRAFT_MATH_TARGETS[name])


# ----------------------------------------------------------------------------- export

EXPORT_SIZES = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1
)
_EXPORT_GEMMA4 = dict(family="gemma4", vocab_size=256, head_dim=16, global_head_dim=32)
EXPORT_TARGETS = {  # kind -> what it adds to EXPORT_SIZES
    "qwen3": dict(family="qwen3", head_dim=32),
    "gemma4": _EXPORT_GEMMA4,
    "gemma4_k_eq_v": dict(_EXPORT_GEMMA4, variant="k_eq_v"),
}
EXPORT_DRAFT = dict(num_draft_layers=1, target_layer_ids=[0, 1, 2], block_size=4, num_anchors=4, mask_token_id=3)


def export_target_config(kind: str, **overrides):
    return make_model_config(**{**EXPORT_SIZES, **EXPORT_TARGETS[kind], **overrides})


def saved_export_draft(root: Path, **model) -> Path:
    """A random draft on the Qwen3 export target (EXPORT_DRAFT with ``model`` applied), saved by
    save_checkpoint under ``root``; returns its step_latest link."""
    from deepspec.training.checkpoint import LATEST_NAME, save_checkpoint

    torch.manual_seed(0)
    draft = build_draft(draft_config_from_target(export_target_config("qwen3"), dict(EXPORT_DRAFT, **model)))
    save_checkpoint(
        root=root, step=1, model=draft, model_state=draft.state_dict(), training_state={"step": 1}, config={}
    )
    return root / LATEST_NAME
