"""Run by tests/test_vllm_loader.py with the .venv-vllm interpreter: build vLLM's own draft class for a
DeepSpec draft folder on CPU, load our safetensors through its ``load_weights`` and run its pieces.

    <vllm python> tests/vllm_probe.py CASES.json OUT.pt

``CASES.json``: a list of ``{"name", "target", "draft", "method", "inputs"}`` (``inputs``: a ``.pt`` file
with ``aux`` [T, n*H], ``ctx_positions`` [T], ``block_ids`` [G], ``block_positions`` [G],
``prev_tokens`` [G]; for Eagle3 ``aux``, ``tokens`` [T], ``positions`` [T]: its first draft step, causal).
``OUT.pt`` gets one dict per case: what was built and loaded (class, every
parameter written or not, every tensor of ours consumed or not, each tensor found in place) and the
outputs of vLLM's modules for ``inputs``; or ``error`` (the exception, one line) where vLLM refused.

How the model is built (the least vLLM needs on CPU): the target's ``ModelConfig`` and a
``SpeculativeConfig(model=<draft>, method=...)`` exactly as ``--speculative-config`` builds them (that
is what picks the class from config.json), a ``VllmConfig`` for the target with the speculative config
attached afterwards, a world-size-1 gloo process group, then ``cls(vllm_config=..., prefix="")``
under ``set_current_vllm_config``. The speculative config is attached after ``VllmConfig`` is built
because its validation refuses DSpark on this machine: without Triton vLLM uses Model Runner V1,
which "does not support: dspark speculative decoding" (vllm/config/vllm.py, _validate_v1_model_runner);
the model classes themselves do not depend on the runner.

Why the forward is not vLLM's end to end: vLLM's ``Attention`` layer reads its KV cache and attention
metadata from the forward context that the model runner sets up per step (slot mappings, block
tables, the backend's metadata builder); a DSpark draft's context K/V are written into that cache by
``precompute_and_store_context_kv`` before the query pass. Without a runner there is no cache and no
metadata, so here (1) ``precompute_and_store_context_kv`` runs for real and its per-layer cache write
(``attn.impl.do_kv_cache_update``) is intercepted to capture the context K/V vLLM would store; (2) the
same K/V are computed layer by layer with each layer's own modules (on CPU the fused path's grouped
k_norm applies layer 0's weight to every layer; the test pins that); (3) each layer's ``Attention``
module is replaced by plain softmax attention of the queries over [layer-by-layer context K/V ; the
block's own K/V] (non-causal, the layer's own scale). Everything with
weights (fc, hidden_norm, qkv/gate_up stacks, q/k norms, rotary, MLP, norms, lm_head, Markov and
confidence heads) is vLLM's module.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback

import torch
from torch import nn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_DIST = {}


def build_config(target: str, draft: str, method: str, block_size: int):
    from vllm.config import DeviceConfig, ModelConfig, ParallelConfig, SpeculativeConfig, VllmConfig

    model_config = ModelConfig(model=target, dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
    parallel = ParallelConfig()
    spec = SpeculativeConfig(
        model=draft,
        method=method,
        num_speculative_tokens=block_size,
        target_model_config=model_config,
        target_parallel_config=parallel,
    )
    vllm_config = VllmConfig(
        model_config=model_config, parallel_config=parallel, device_config=DeviceConfig(device="cpu")
    )
    vllm_config.speculative_config = spec  # see the module docstring (Model Runner V1 refuses dspark)
    return vllm_config


def ensure_distributed(vllm_config) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    if _DIST:
        return
    with set_current_vllm_config(vllm_config):
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            backend="gloo",
            distributed_init_method=f"tcp://127.0.0.1:{_free_port()}",
        )
        initialize_model_parallel(1, 1)
    _DIST["done"] = True


def read_ours(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


# Where vLLM puts each of our tensors: (vLLM parameter, rows) -- None = the whole parameter.
_STACKS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


def expected_place(name: str, params: dict[str, torch.Tensor], model) -> tuple[str, slice | None]:
    full = name if name.startswith("lm_head") else "model." + name
    if full in params:
        return full, None
    parts = full.split(".")
    for i, part in enumerate(parts):
        if part in _STACKS:
            stacked, index = _STACKS[part]
            pname = ".".join(parts[:i] + [stacked] + parts[i + 1 :])
            module = model.get_submodule(".".join(parts[: i - 1] + [parts[i - 1], stacked]))
            if stacked == "qkv_proj":
                attn = model.get_submodule(".".join(parts[:i]))
                q, kv = attn.q_size, attn.kv_size
                bounds = [(0, q), (q, q + kv), (q + kv, q + 2 * kv)][index]
            else:
                half = module.weight.shape[0] // 2
                bounds = [(0, half), (half, 2 * half)][index]
            return pname, slice(*bounds)
    return full, None


def check_load(model, ours: dict[str, torch.Tensor]) -> dict:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for p in params.values():
            if p.is_floating_point():
                p.fill_(float("nan"))
    consumed: list[str] = []

    def weights():
        for name, tensor in ours.items():
            consumed.append(name)
            yield name, tensor.clone()

    returned = model.load_weights(weights())
    # load_weights may drop modules it found no weights for (e.g. confidence_head): re-read the params.
    params = dict(model.named_parameters())
    not_written = sorted(n for n, p in params.items() if p.is_floating_point() and p.numel() and torch.isnan(p).any())
    placed, misplaced, no_home = [], [], []
    for name, tensor in ours.items():
        pname, rows = expected_place(name, params, model)
        holder = params.get(pname, buffers.get(pname))
        if holder is None:
            no_home.append(name)
            continue
        got = holder.detach() if rows is None else holder.detach()[rows]
        ok = tuple(got.shape) == tuple(tensor.shape) and torch.equal(got.to(tensor.dtype), tensor)
        (placed if ok else misplaced).append(name)
    return {
        "class": type(model).__name__,
        "params": sorted(params),
        "not_written": not_written,
        "consumed": consumed,
        "returned": sorted(returned) if returned is not None else None,
        "placed": placed,
        "misplaced": misplaced,
        "no_home": no_home,
        "param_shapes": {n: tuple(p.shape) for n, p in params.items()},
    }


class PlainAttention(nn.Module):
    """Stands in for vLLM's ``Attention``: queries over [context K/V ; the block's own K/V], non-causal."""

    def __init__(self, old, context: dict, index: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_size = old.num_heads, old.num_kv_heads, old.head_size
        self.scale = float(old.impl.scale)
        self.context, self.index = context, index

    def forward(self, q, k, v):
        n = q.shape[0]
        empty = k.new_zeros(0, self.num_kv_heads, self.head_size)
        ck, cv = self.context[self.index] if self.context is not None else (empty, empty)
        q = q.view(n, self.num_heads, self.head_size).transpose(0, 1)
        k = torch.cat([ck, k.view(n, self.num_kv_heads, self.head_size)], dim=0).transpose(0, 1)
        v = torch.cat([cv, v.view(n, self.num_kv_heads, self.head_size)], dim=0).transpose(0, 1)
        rep = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if self.context is None:  # Eagle3's first step: causal over its own tokens
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        return (scores.softmax(dim=-1) @ v).transpose(0, 1).reshape(n, self.num_heads * self.head_size)


def layerwise_context_kv(model, ctx_states: torch.Tensor, positions: torch.Tensor) -> list:
    """Context K/V per layer through each layer's own modules (hidden_norm, k/v projection, k_norm, rotary)."""
    inner = model.model
    normed = inner.hidden_norm(ctx_states)
    out = []
    for layer in inner.layers:
        attn = layer.self_attn
        n, hd = normed.shape[0], attn.head_dim
        if hasattr(attn, "_kv_proj"):  # Gemma 4 DSpark: own k (and v) projections, k_norm / v_norm inside
            k, v = attn._kv_proj(normed)
        else:  # Qwen3: the qkv stack, then k_norm per head
            qkv, _ = attn.qkv_proj(normed)
            _, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
            k = attn.k_norm(k.reshape(n, -1, hd)).reshape(n, -1)
        _, k = attn.rotary_emb(positions, torch.zeros(n, attn.num_heads * hd, dtype=k.dtype), k.contiguous())
        out.append((k.reshape(n, -1, hd).clone(), v.reshape(n, -1, hd).clone()))
    return out


def run_forward(model, inputs: dict) -> dict:
    inner = model.model
    fused: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, attn in enumerate(inner._attn_layers):

        def capture(layer, k, v, kv_cache, slot_mapping, _i=i):
            fused[_i] = (k.clone(), v.clone())

        attn.impl.do_kv_cache_update = capture
        attn.kv_cache = None
    with torch.no_grad():
        ctx_states = model.combine_hidden_states(inputs["aux"])
        slots = torch.arange(ctx_states.shape[0], dtype=torch.long)
        # vLLM's own (fused) context K/V path, the one serving runs; its cache writes are captured.
        model.precompute_and_store_context_kv(ctx_states, inputs["ctx_positions"], slots)
        # The same K/V layer by layer: on CPU the fused path's grouped k_norm (one rms_norm call with a
        # [layers, head_dim] weight) uses layer 0's weight for every layer, so the query pass attends over these.
        layerwise = layerwise_context_kv(model, ctx_states, inputs["ctx_positions"])
        context = dict(enumerate(layerwise))
        for i, layer in enumerate(inner.layers):
            layer.self_attn.attn = PlainAttention(layer.self_attn.attn, context, i)
        hidden = inner(inputs["block_ids"], inputs["block_positions"])
        logits = model.compute_draft_logits(hidden)
        embed = model.markov_embed(inputs["prev_tokens"])
        bias = model.markov_bias(embed)
        conf = model.compute_confidence(hidden, embed) if inner.confidence_head is not None else None
    return {
        "fc_out": ctx_states,
        "fused_context_k": [fused[i][0] for i in sorted(fused)],
        "fused_context_v": [fused[i][1] for i in sorted(fused)],
        "context_k": [k for k, _ in layerwise],
        "context_v": [v for _, v in layerwise],
        "hidden": hidden,
        "base_logits": logits,
        "markov_bias": bias,
        "confidence": conf,
    }


def run_eagle3_forward(model, inputs: dict) -> dict:
    """vLLM's Eagle3 first draft step over T positions: fc(aux) + embeds -> layer 0 -> norm -> logits."""
    for layer in model.model.layers:
        layer.self_attn.attn = PlainAttention(layer.self_attn.attn, None, 0)
    with torch.no_grad():
        fused = model.combine_hidden_states(inputs["aux"])
        hidden, _ = model(inputs["tokens"], inputs["positions"], fused)
        logits = model.compute_logits(hidden)
    return {"fc_out": fused, "hidden": hidden, "logits": logits}


# What vLLM's config conversion made of a draft folder (speculators folders go through its algos.py).
_HF_FIELDS = (
    "sample_from_anchor",
    "dspark_bonus_anchor",
    "target_layer_ids",
    "dflash_config",
    "norm_before_residual",
    "draft_vocab_size",
    "markov_rank",
    "markov_head_type",
    "mask_token_id",
    "block_size",
)


def num_speculative_tokens(folder: str) -> int:
    config = json.load(open(os.path.join(folder, "config.json")))
    if "block_size" in config:
        return int(config["block_size"])
    methods = (config.get("speculators_config") or {}).get("proposal_methods") or [{}]
    return int(methods[0].get("speculative_tokens", 1))


def run_case(case: dict) -> dict:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.models.registry import ModelRegistry

    vllm_config = build_config(case["target"], case["draft"], case["method"], num_speculative_tokens(case["draft"]))
    spec = vllm_config.speculative_config
    ensure_distributed(vllm_config)
    draft_config = spec.draft_model_config
    hf = draft_config.hf_config
    out = {
        "method": spec.method,
        "architectures": list(draft_config.architectures),
        "num_speculative_tokens": spec.num_speculative_tokens,
        "aux_layer_ids": None,
        "hf_config_class": type(hf).__name__,
        "hf": {k: getattr(hf, k) for k in _HF_FIELDS if hasattr(hf, k)},
    }
    from vllm.v1.worker.gpu.spec_decode.eagle.eagle3_utils import get_eagle3_aux_layers_from_config

    aux = get_eagle3_aux_layers_from_config(spec)
    out["aux_layer_ids"] = list(aux) if aux else None
    cls, arch = ModelRegistry.resolve_model_cls(draft_config.architectures, model_config=draft_config)
    out["arch"] = arch
    torch.set_default_dtype(torch.float32)
    with set_current_vllm_config(vllm_config):
        model = cls(vllm_config=vllm_config, prefix="").eval()
        out["load"] = check_load(model, read_ours(case["draft"]))
        # What vLLM's loader runs next (base_loader.py): e.g. CPU GEMM dispatch (layer.cpu_linear).
        from vllm.model_executor.model_loader.utils import process_weights_after_loading

        process_weights_after_loading(model, draft_config, torch.device("cpu"))
        if case.get("inputs"):
            inputs = torch.load(case["inputs"])
            out["forward"] = (run_eagle3_forward if arch.startswith("Eagle3") else run_forward)(model, inputs)
    return out


def facts() -> dict:
    """Checks of vLLM's own source for what only its GPU runner would do."""
    import vllm

    dflash = os.path.join(
        os.path.dirname(vllm.__file__), "v1", "worker", "gpu", "spec_decode", "dflash", "speculator.py"
    )
    text = open(dflash).read() if os.path.exists(dflash) else ""
    return {"dflash_refuses_sample_from_anchor": "sample_from_anchor=True is not supported for DFlash" in text}


def serve_resolution(folder: str) -> dict:
    """What ``vllm serve <folder>`` resolves a speculators folder to (its target and speculative config)."""
    from vllm.transformers_utils.config import maybe_override_with_speculators

    model, _, spec = maybe_override_with_speculators(model=folder, tokenizer=None, trust_remote_code=False)
    return {"model": model, "speculative_config": spec}


def validate_serving(case: dict) -> dict:
    """What ``vllm serve <target> --speculative-config`` makes of a draft folder: the whole ``VllmConfig``
    built with its speculative config and validated (the runner checks included), or the error."""
    from vllm.config import DeviceConfig, ModelConfig, ParallelConfig, SpeculativeConfig, VllmConfig

    model_config = ModelConfig(model=case["target"], dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
    parallel = ParallelConfig()
    spec = SpeculativeConfig(
        model=case["draft"],
        method=case["method"],
        num_speculative_tokens=num_speculative_tokens(case["draft"]),
        target_model_config=model_config,
        target_parallel_config=parallel,
    )
    VllmConfig(
        model_config=model_config,
        parallel_config=parallel,
        device_config=DeviceConfig(device="cpu"),
        speculative_config=spec,
    )
    return {"validated": True}


def main() -> None:
    cases_file, out_file = sys.argv[1:3]
    results = {"_facts": facts()}
    for case in json.load(open(cases_file)):
        if case.get("serve_resolution"):
            results[case["name"]] = serve_resolution(case["draft"])
            continue
        try:
            results[case["name"]] = validate_serving(case) if case.get("validate") else run_case(case)
        except Exception as exc:  # the test asserts on which cases vLLM refuses, and why
            results[case["name"]] = {
                "error": f"{type(exc).__name__}: {exc}"[:3000],
                "traceback": traceback.format_exc()[-4000:],
            }
    torch.save(results, out_file)


if __name__ == "__main__":
    main()
