"""A DeepSpec DSpark / DFlash draft folder as vLLM's own draft classes load it (vLLM 0.32).

vLLM picks the class from ``config.json`` ``architectures`` (``Qwen3DSparkModel`` ->
``Qwen3DSparkForCausalLM``, ``Gemma4DSparkModel`` -> ``Gemma4DSparkForCausalLM``) when served with
``--speculative-config '{"method": "dspark", "model": <folder>}'``, and reads our keys as they are:
``target_layer_ids`` (it adds 1: its capture index L is the input of target layer L, i.e. the
output of our layer L-1), ``mask_token_id``, ``block_size`` (the default
``num_speculative_tokens``), ``markov_rank``, ``enable_confidence_head``,
``confidence_head_with_markov``. Tensor names are ours (it prefixes ``model.`` and stacks
q/k/v and gate/up itself). tests/test_vllm_loader.py checks all of this against vLLM's code.

What differs, and what :func:`to_vllm_folder` therefore does:

- DFlash (``markov_rank == 0``). DeepSpec's DFlash is DSpark's layout without the Markov head: the
  anchor slot predicts the next token and each slot the one after it. vLLM's ``dflash`` method uses
  the other layout (anchor = bonus token, each mask predicts its own position; our
  ``sample_from_anchor: false`` drafts, exported in the speculators format), and it would look for a
  ``DFlash<arch>`` class; so a DeepSpec-layout DFlash draft is served with the ``dspark`` method. vLLM's
  DSpark classes always build a Markov head of ``markov_rank``; a rank-0 head crashes vLLM's CPU weight
  processing (SIGFPE in ``create_onednn_mm``). The export writes ``markov_rank = 1`` with all-zero
  ``markov_w1`` / ``markov_w2``: the bias is exactly 0, so the drafts are unchanged.
- Gated / RNN Markov heads: vLLM implements only the vanilla head (bias = W2 W1[x_{k-1}]) and
  ignores ``markov_head_type``; refused.
- Gemma 4 drafts without ``attention_k_eq_v``: vLLM's Gemma 4 DSpark precomputes context K/V
  assuming k=v attention on every layer (an assertion at load time); refused.
- Eagle3: vLLM has no DeepSpec-layout Eagle3 class (it reads the speculators format,
  :mod:`deepspec.export.speculators`); refused.

The draft's ``sample_from_anchor`` is written explicitly (true, DeepSpec's layout, is what vLLM's DSpark
speculator assumes when the key is absent; false is its fill-in layout). The frozen ``embed_tokens`` /
``lm_head`` copies are kept (vLLM then keeps its own copies instead of sharing the target's; the values
are the target's either way).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from deepspec.errors import DeepSpecError
from deepspec.export.speculators import (
    SpeculatorsFormatError,
    cast,
    check_output,
    read_any_config,
    read_any_draft,
    write_folder,
)

SUPPORTED_ARCHITECTURES = ("Qwen3DSparkModel", "Gemma4DSparkModel")


class VllmExportError(DeepSpecError, ValueError):
    """A draft that vLLM's own draft classes cannot serve; the message says why."""


def check_vllm_servable(*, config: dict) -> None:
    """Raise :class:`VllmExportError` when vLLM's DSpark classes cannot serve a draft with ``config``."""
    arch = (config.get("architectures") or [None])[0]
    if arch is not None and "Eagle3" in arch:
        raise VllmExportError(
            f"{arch}: vLLM has no DeepSpec-layout Eagle3 class; it loads Eagle3 drafts in the speculators format "
            "(Eagle3Qwen3ForCausalLM / Eagle3LlamaForCausalLM): export it with --format speculators"
        )
    if arch not in SUPPORTED_ARCHITECTURES:
        raise VllmExportError(
            f"architectures {config.get('architectures')!r}: expected one of "
            f"{list(SUPPORTED_ARCHITECTURES)} (a DeepSpec DSpark/DFlash draft)"
        )
    rank = int(config.get("markov_rank") or 0)
    kind = config.get("markov_head_type", "vanilla")
    if rank > 0 and kind != "vanilla":
        raise VllmExportError(
            f"markov_head_type={kind!r}: vLLM implements only the vanilla Markov head (bias = W2 W1[x_(k-1)], "
            "qwen3_dspark.py DSparkMarkovHead) and ignores markov_head_type; a gated or rnn head cannot be served. "
            "Train with markov_head_type='vanilla'"
        )
    if arch == "Gemma4DSparkModel" and not config.get("attention_k_eq_v", False):
        raise VllmExportError(
            "Gemma 4 draft without attention_k_eq_v: vLLM's Gemma4DSparkModel precomputes context K/V assuming "
            "k=v attention on every layer (it asserts this when loading); only k=v Gemma 4 targets' drafts can "
            "be served"
        )
    if config.get("draft_vocab_size") not in (None, config.get("vocab_size")):
        raise VllmExportError("a reduced draft vocabulary needs d2t tables, which DeepSpec drafts do not have")


def vllm_caveat(config: dict) -> str | None:
    """Why vLLM (0.32) cannot serve the speculators export of our ``config``, or None when it can."""
    from deepspec.algorithms import algorithm_of
    from deepspec.models.draft_config import draft_config_from_dict

    algorithm, model_type = algorithm_of(draft_config_from_dict(config)), config.get("model_type")
    served_wrongly = algorithm.speculators.export_refused(config)  # DeepSpec-layout DFlash
    if served_wrongly:
        return served_wrongly
    if algorithm.name == "eagle3":
        if model_type not in ("qwen3", "llama"):
            return f"vLLM's speculators Eagle3 path builds only qwen3 / llama layers, not {model_type}"
        return None
    if model_type != "qwen3":
        return (
            f"vLLM maps every speculators dspark folder to Qwen3DSparkModel, which cannot hold {model_type} "
            "layers; serve it with --format deepspec (Gemma4DSparkModel)"
        )
    try:
        check_vllm_servable(config=config)
    except VllmExportError as exc:
        return str(exc)
    return None


def to_vllm_folder(
    *,
    draft_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
    frozen_target: str | None = None,
) -> Path:
    """Write ``output_dir`` (config.json + model.safetensors) that vLLM's DSpark classes load.

    ``draft_dir`` is a DeepSpec draft folder or a speculators-format one (``frozen_target`` fills an
    embedding / LM head such a folder omits). Serve it with ``--speculative-config '{"method": "dspark",
    "model": "<output_dir>"}'``. See the module docstring for what changes (DFlash gets an all-zero
    rank-1 Markov head; nothing else). ``dtype`` casts every floating tensor (None keeps the saved
    dtypes) and is recorded as ``torch_dtype``.
    """
    from deepspec.models.loading import DraftLoadError

    src, out = Path(draft_dir), Path(output_dir)
    if not src.is_dir():
        raise VllmExportError(f"no draft folder {src}")
    try:
        check_vllm_servable(config=read_any_config(src))
        check_output(out, src=src, overwrite=overwrite, inputs=(frozen_target,))
        config, state = read_any_draft(src, frozen_target=frozen_target)
    except (DraftLoadError, SpeculatorsFormatError) as exc:
        raise VllmExportError(str(exc)) from None
    config = dict(config)
    if int(config.get("markov_rank") or 0) == 0:
        ref = state.get("lm_head.weight", state.get("embed_tokens.weight"))
        if ref is None:
            raise VllmExportError(f"{src}/model.safetensors has neither lm_head.weight nor embed_tokens.weight")
        vocab = int(config["vocab_size"])
        state = dict(state)
        state["markov_head.markov_w1.weight"] = torch.zeros(vocab, 1, dtype=ref.dtype)
        state["markov_head.markov_w2.weight"] = torch.zeros(vocab, 1, dtype=ref.dtype)
        config.update(markov_rank=1, markov_head_type="vanilla")
    config["sample_from_anchor"] = bool(config.get("sample_from_anchor", True))  # vLLM's DSpark reads both layouts
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    try:
        return write_folder(
            out, config=config, state=cast(state, dtype), overwrite=overwrite, src=src, inputs=(frozen_target,)
        )
    except SpeculatorsFormatError as exc:
        raise VllmExportError(str(exc)) from None


# ----------------------------------------------------------------------------- which vLLM method serves a draft

# How each vLLM method reads a block: does slot 0 (the anchor, the last committed token) predict the next
# token (sample_from_anchor: true, DeepSpec's layout), or is it the bonus token with each mask predicting its
# own position (false, vLLM / SGLang / z-lab DFlash)? dspark follows the folder's flag (default true).
METHOD_READS_ANCHOR = {"dflash": False, "dspark": None}
METHOD_ALGORITHMS = {"eagle3": ("eagle3",), "dflash": ("dflash",), "dspark": ("dspark", "dflash")}


def draft_samples_from_anchor(config: dict, raw_config: dict | None = None) -> bool | None:
    """The block layout of a draft (our config dict; ``raw_config`` its folder's own config.json, which a
    speculators folder writes the flag into): True for DeepSpec's, None for drafts without blocks."""
    from deepspec.algorithms import algorithm_of
    from deepspec.models.draft_config import draft_config_from_dict

    if algorithm_of(draft_config_from_dict(config)).name == "eagle3":
        return None
    raw = raw_config or {}
    return bool(raw.get("sample_from_anchor", config.get("sample_from_anchor", True)))


def vllm_serving_plan(config: dict) -> tuple[str, str]:
    """(export format, vLLM speculative method) that serves a draft with our config dict as we decode it."""
    from deepspec.algorithms import algorithm_of
    from deepspec.models.draft_config import draft_config_from_dict

    name = algorithm_of(draft_config_from_dict(config)).name
    if name == "eagle3":
        return "speculators", "eagle3"
    if name == "dflash" and draft_samples_from_anchor(config) is False:
        return "speculators", "dflash"  # the engines' DFlash layout: vLLM's dflash method, V1 and V2 runners
    return "deepspec", "dspark"


def engine_anchor_layout_problem(*, raw_config: dict, config: dict, method: str | None) -> tuple[str, str] | None:
    """(why, fix) when vLLM's ``method`` (None: :func:`vllm_serving_plan`'s) would read the draft's
    predictions from other slots than we trained them in, or does not serve its algorithm; else None."""
    from deepspec.algorithms import algorithm_of
    from deepspec.models.draft_config import draft_config_from_dict

    name = algorithm_of(draft_config_from_dict(config)).name
    fmt, planned = vllm_serving_plan(config)
    method = method or planned
    if name not in METHOD_ALGORITHMS.get(method, (name,)):
        return (
            f"vLLM's method {method!r} does not serve a {name} draft",
            f"serve it with method {planned!r} (export_draft.py --format {fmt})",
        )
    ours, reads = draft_samples_from_anchor(config, raw_config), METHOD_READS_ANCHOR.get(method)
    if ours is None or reads is None or ours == reads:
        return None
    return (
        f"the draft uses sample_from_anchor={str(ours).lower()} (slot k predicts token p+k+1), but vLLM's "
        f"{method!r} method reads slot 0 as the bonus token: every prediction would be read one slot off",
        f"serve it with method {planned!r} (export_draft.py --format {fmt})",
    )
