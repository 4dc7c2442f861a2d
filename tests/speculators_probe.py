"""Run by tests/test_vllm_loader.py with the .venv-vllm interpreter: load speculators-format folders with
the ``speculators`` package's own classes (vllm-project/speculators 0.9.0).

    <vllm python> tests/speculators_probe.py FOLDERS.json OUT.json

For each folder: ``SpeculatorModelConfig.from_pretrained`` (its pydantic config classes validate every
field) and ``SpeculatorModel.from_pretrained`` (builds DSparkDraftModel / DFlashDraftModel /
Eagle3DraftModel, loads the safetensors, then the verifier's embedding / LM head). OUT.json gets, per
folder, the config class and fields, the model class, the state-dict names the model has beyond the
file, the file's tensors it lacks, those whose values differ after loading, and any left NaN (speculators
initialises unloaded frozen pieces to NaN).
"""

import json
import sys
import traceback

import torch
from safetensors.torch import load_file


def probe(folder: str) -> dict:
    from speculators import SpeculatorModel, SpeculatorModelConfig

    config = SpeculatorModelConfig.from_pretrained(folder)
    model = SpeculatorModel.from_pretrained(folder)
    state, ours = model.state_dict(), load_file(f"{folder}/model.safetensors")
    fields = (
        "speculators_model_type",
        "aux_hidden_state_layer_ids",
        "eagle_aux_hidden_state_layer_ids",
        "block_size",
        "mask_token_id",
        "markov_rank",
        "markov_head_type",
        "enable_confidence_head",
        "confidence_head_with_markov",
        "sample_from_anchor",
        "draft_vocab_size",
        "norm_before_residual",
    )
    return {
        "config_class": type(config).__name__,
        "fields": {k: getattr(config, k) for k in fields if hasattr(config, k)},
        "num_hidden_layers": config.transformer_layer_config.num_hidden_layers,
        "model_class": type(model).__name__,
        "extra": sorted(set(state) - set(ours)),
        "lacking": sorted(set(ours) - set(state)),
        "differ": sorted(k for k in ours if k in state and not torch.equal(state[k], ours[k])),
        "nan": sorted(k for k, v in state.items() if v.is_floating_point() and torch.isnan(v).any()),
    }


def main() -> None:
    folders_file, out_file = sys.argv[1:3]
    results = {}
    for name, folder in json.load(open(folders_file)).items():
        try:
            results[name] = probe(folder)
        except Exception as exc:
            results[name] = {
                "error": f"{type(exc).__name__}: {exc}"[:3000],
                "traceback": traceback.format_exc()[-4000:],
            }
    json.dump(results, open(out_file, "w"), indent=1, default=str)


if __name__ == "__main__":
    main()
