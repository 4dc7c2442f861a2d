"""vLLM's own draft classes accept our drafts: built on CPU from our folders, every parameter loaded, same outputs.

Tiny random targets (Qwen3, Gemma 4 with k=v attention) and DSpark / DFlash drafts with random weights
are saved the way training saves them (``save_checkpoint`` -> ``step_latest``). tests/vllm_probe.py,
run with the .venv-vllm interpreter, builds the class ``--speculative-config '{"method": "dspark"}'``
selects for each folder (Qwen3DSparkForCausalLM, Gemma4DSparkForCausalLM), feeds our safetensors to
its ``load_weights`` and runs its modules; this file checks that every vLLM parameter was written,
every tensor of ours landed in place, and vLLM's outputs equal our draft's.

The forward is vLLM's modules with one stand-in: vLLM's ``Attention`` needs a KV cache and the
attention metadata that only its model runner builds, so the probe captures the context K/V that
``precompute_and_store_context_kv`` would write to the cache and replaces each ``Attention`` by plain
softmax attention over [context ; block] (see tests/vllm_probe.py). Drafts that vLLM cannot serve are
checked to fail the way vLLM fails, and :func:`deepspec.export.to_vllm_folder` refuses them.

Skipped without the vLLM environment unless DEEPSPEC_REQUIRE_VLLM=1 (scripts/test.sh sets it).
"""

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from deepspec.export import VllmExportError, to_vllm_folder
from deepspec.export.speculators import SpeculatorsFormatError, load_any_draft, to_speculators_folder
from deepspec.models import build_draft, draft_config_from_target
from deepspec.models.blocks import project_kv, rotary_cos_sin
from deepspec.models.draft_config import DRAFT_LAYER_TYPE
from deepspec.models.eagle3 import ttt_mask
from deepspec.target_files import load_frozen_target_pieces
from deepspec.tiny_models import model_from_config
from deepspec.training.checkpoint import LATEST_NAME, save_checkpoint
from shared_targets import EXPORT_SIZES, export_target_config
from vllm_env import skip_or_fail, vllm_interpreter

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "vllm_probe.py"
H, G, T = EXPORT_SIZES["hidden_size"], 4, 6  # hidden size, block size, context length of the forward check
LAYER_IDS = [0, 1, 2]

PARALLEL = dict(num_draft_layers=2, target_layer_ids=LAYER_IDS, block_size=G, num_anchors=4)
DRAFTS = {  # name -> (target, cfg.model overrides)
    "dspark_qwen3": (
        "qwen3",
        dict(
            algorithm="dspark",
            markov_rank=8,
            markov_head_type="vanilla",
            confidence_head_alpha=1.0,
            confidence_head_with_markov=True,
        ),
    ),
    "dflash_qwen3": ("qwen3", dict(algorithm="dflash", markov_rank=0)),
    "dspark_qwen3_gated": ("qwen3", dict(algorithm="dspark", markov_rank=8, markov_head_type="gated")),
    "dspark_gemma4": (
        "gemma4_k_eq_v",
        dict(
            algorithm="dspark",
            markov_rank=8,
            markov_head_type="vanilla",
            confidence_head_alpha=1.0,
            confidence_head_with_markov=False,
        ),
    ),
    "dspark_gemma4_no_k_eq_v": ("gemma4", dict(algorithm="dspark", markov_rank=8, markov_head_type="vanilla")),
    "eagle3_qwen3": ("qwen3", dict(algorithm="eagle3", num_draft_layers=1)),
}
SPECULATORS = ("dspark_qwen3", "eagle3_qwen3", "dspark_gemma4")  # exported with --format speculators (not DFlash)
MASK = {"qwen3": 3, "gemma4": 4, "gemma4_k_eq_v": 4}


@pytest.fixture(scope="module")
def vllm_python():
    py = vllm_interpreter()
    return py


# ----------------------------------------------------------------------------- targets and drafts


def save_target(kind: str, folder: Path) -> Path:
    model_from_config(export_target_config(kind), seed=0).save_pretrained(folder)
    return folder


def save_draft(name: str, target_kind: str, root: Path, target: Path) -> Path:
    """A draft with random nonzero weights and the target's frozen pieces, saved as training saves it.

    Returns its step_latest folder."""
    overrides = DRAFTS[name][1]
    torch.manual_seed(1)
    draft = build_draft(
        draft_config_from_target(
            export_target_config(target_kind), dict(PARALLEL, mask_token_id=MASK[target_kind], **overrides)
        )
    )
    with torch.no_grad():
        for pname, p in draft.named_parameters():
            p.uniform_(0.5, 1.5) if pname.endswith("norm.weight") else p.normal_(0.0, 0.1)
            if name == "dspark_gemma4":  # a Markov bias of the size of the soft-cap, so capping it shows
                for p in draft.markov_head.parameters():
                    p.normal_(0.0, 3.0)
        for bname, b in draft.named_buffers():
            if bname.endswith("layer_scalar"):
                b.fill_(0.75)
    embed, lm_head = load_frozen_target_pieces(str(target))
    draft.load_frozen_weights(embed=embed, lm_head=lm_head)
    save_checkpoint(
        root=root, step=1, model=draft, model_state=draft.state_dict(), training_state={"step": 1}, config={}
    )
    return root / LATEST_NAME


def eagle3_inputs(vocab: int, folder: Path) -> Path:
    g = torch.Generator().manual_seed(3)
    torch.save(
        {
            "aux": torch.randn(T, len(LAYER_IDS) * H, generator=g),
            "tokens": torch.randint(5, vocab, (T,), generator=g),
            "positions": torch.arange(T),
        },
        folder,
    )
    return folder


def forward_inputs(vocab: int, folder: Path) -> Path:
    g = torch.Generator().manual_seed(2)
    torch.save(
        {
            "aux": torch.randn(T, len(LAYER_IDS) * H, generator=g),
            "ctx_positions": torch.arange(T),
            "block_ids": torch.tensor([7] + [MASK["qwen3"] if vocab > 256 else MASK["gemma4"]] * (G - 1)),
            "block_positions": torch.arange(T, T + G),
            "prev_tokens": torch.randint(5, vocab, (G,), generator=g),
        },
        folder,
    )
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("vllm_loader")
    targets = {kind: save_target(kind, base / f"target_{kind}") for kind in ("qwen3", "gemma4_k_eq_v", "gemma4")}
    drafts = {name: save_draft(name, kind, base / name, targets[kind]) for name, (kind, _) in DRAFTS.items()}
    vllm_dflash = to_vllm_folder(draft_dir=drafts["dflash_qwen3"], output_dir=base / "dflash_qwen3_vllm")
    spec = {
        name: to_speculators_folder(
            draft_dir=drafts[name],
            output_dir=base / f"{name}_speculators",
            verifier_name_or_path=str(targets[DRAFTS[name][0]]),
        )
        for name in SPECULATORS
    }
    vocab = export_target_config("qwen3").vocab_size
    return {
        "base": base,
        "targets": targets,
        "drafts": drafts,
        "dflash_vllm": vllm_dflash,
        "speculators": spec,
        "inputs": {
            "qwen3": forward_inputs(vocab, base / "in_qwen3.pt"),
            "gemma4": forward_inputs(256, base / "in_gemma4.pt"),
            "eagle3": eagle3_inputs(vocab, base / "in_eagle3.pt"),
        },
    }


@pytest.fixture(scope="module")
def probe(vllm_python, built):
    """One vLLM process for every case (its start-up dominates)."""
    t, d = built["targets"], built["drafts"]
    cases = [
        # Served as saved: DSpark with the vanilla Markov head and a confidence head.
        dict(
            name="dspark_qwen3",
            target=t["qwen3"],
            draft=d["dspark_qwen3"],
            method="dspark",
            inputs=built["inputs"]["qwen3"],
        ),
        # DFlash after to_vllm_folder (all-zero rank-1 Markov head), served with method dspark.
        dict(
            name="dflash_qwen3",
            target=t["qwen3"],
            draft=built["dflash_vllm"],
            method="dspark",
            inputs=built["inputs"]["qwen3"],
        ),
        # DFlash as saved with vLLM's dflash method: refused (architecture DFlashQwen3DSparkModel).
        # (As saved with method dspark it is not run here: the rank-0 Markov head kills the process with
        # SIGFPE in vLLM's CPU GEMM set-up, create_onednn_mm.)
        dict(name="dflash_qwen3_as_dflash", target=t["qwen3"], draft=d["dflash_qwen3"], method="dflash"),
        dict(name="dspark_qwen3_gated", target=t["qwen3"], draft=d["dspark_qwen3_gated"], method="dspark"),
        dict(
            name="dspark_gemma4",
            target=t["gemma4_k_eq_v"],
            draft=d["dspark_gemma4"],
            method="dspark",
            inputs=built["inputs"]["gemma4"],
        ),
        dict(name="dspark_gemma4_no_k_eq_v", target=t["gemma4"], draft=d["dspark_gemma4_no_k_eq_v"], method="dspark"),
        # --format speculators exports, read through vLLM's speculators config path (algos.py).
        dict(
            name="dspark_qwen3_speculators",
            target=t["qwen3"],
            draft=built["speculators"]["dspark_qwen3"],
            method="dspark",
            inputs=built["inputs"]["qwen3"],
        ),
        # The one folder DeepSpec writes for its DFlash layout (--format deepspec), served the way a user
        # would, with vLLM's config validation on: its CPU (V1) model runner refuses both methods.
        dict(
            name="dflash_deepspec_served_as_dflash",
            target=t["qwen3"],
            draft=built["dflash_vllm"],
            method="dflash",
            validate="1",
        ),
        dict(
            name="dflash_deepspec_served_as_dspark",
            target=t["qwen3"],
            draft=built["dflash_vllm"],
            method="dspark",
            validate="1",
        ),
        dict(
            name="eagle3_qwen3_speculators",
            target=t["qwen3"],
            draft=built["speculators"]["eagle3_qwen3"],
            method="eagle3",
            inputs=built["inputs"]["eagle3"],
        ),
        # `vllm serve <speculators folder>`: the target and speculative config vLLM derives from it.
        dict(
            name="serve_eagle3_speculators",
            target=t["qwen3"],
            draft=built["speculators"]["eagle3_qwen3"],
            method="eagle3",
            serve_resolution="1",
        ),
    ]
    cases_file, out_file = built["base"] / "cases.json", built["base"] / "probe.pt"
    cases_file.write_text(json.dumps([{k: str(v) for k, v in c.items()} for c in cases]))
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_CPU_KVCACHE_SPACE="1")
    try:
        proc = subprocess.run(
            [vllm_python, str(PROBE), str(cases_file), str(out_file)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=built["base"],
        )
    except subprocess.TimeoutExpired:
        pytest.fail("tests/vllm_probe.py ran over 600 s")
    if proc.returncode != 0 and "No module named 'vllm'" in proc.stderr:
        skip_or_fail(f"`import vllm` fails with {vllm_python}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return torch.load(out_file, weights_only=False)


def loaded(probe, name):
    result = probe[name]
    assert "error" not in result, result.get("traceback", result.get("error"))
    return result


# ----------------------------------------------------------------------------- what vLLM builds and loads


@pytest.mark.vllm
@pytest.mark.parametrize(
    "name, cls",
    [
        ("dspark_qwen3", "Qwen3DSparkForCausalLM"),
        ("dflash_qwen3", "Qwen3DSparkForCausalLM"),
        ("dspark_gemma4", "Gemma4DSparkForCausalLM"),
    ],
)
def test_vllm_builds_its_class_and_loads_every_tensor(probe, built, name, cls):
    result = loaded(probe, name)
    load = result["load"]
    assert result["method"] == "dspark" and load["class"] == cls
    # Our target_layer_ids + 1 (vLLM captures the input of layer L = the output of our layer L-1).
    assert result["aux_layer_ids"] == [i + 1 for i in LAYER_IDS]
    assert result["num_speculative_tokens"] == G  # from block_size
    # Every parameter was written (all were NaN before load_weights) ...
    # ... except Qwen3's mask_embedding, an unused placeholder (DSpark masks via the embedding row).
    assert load["not_written"] == (["model.mask_embedding"] if cls.startswith("Qwen3") else [])
    # ... and every tensor of ours was consumed and found in place (q/k/v and gate/up inside the stacks).
    folder = built["dflash_vllm"] if name == "dflash_qwen3" else built["drafts"][name]
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        ours = sorted(fh.keys())
    assert sorted(load["consumed"]) == ours
    assert load["misplaced"] == [] and load["no_home"] == [] and sorted(load["placed"]) == ours
    if load["returned"] is not None:  # Gemma 4 reports what it loaded: every parameter (+ layer_scalar buffers)
        assert set(load["params"]) <= set(load["returned"])


@pytest.mark.vllm
@pytest.mark.parametrize(
    "name, reason",
    [
        ("dflash_qwen3_as_dflash", "DFlashQwen3DSparkModel"),  # vLLM's dflash method renames the architecture
        ("dspark_gemma4_no_k_eq_v", "uniform attention_k_eq_v"),
    ],
)
def test_vllm_refuses_what_to_vllm_folder_refuses(probe, name, reason):
    assert reason in probe[name]["error"]


@pytest.mark.vllm
@pytest.mark.parametrize(
    "name, reason",
    [
        ("dflash_deepspec_served_as_dflash", "DFlashQwen3DSparkModel"),  # no DFlash class for our architecture
        ("dflash_deepspec_served_as_dspark", "Model Runner V1 does not support: dspark"),
    ],
)
def test_no_vllm_runner_here_decodes_deepspec_dflash_one_slot_off(probe, built, tmp_path, name, reason):
    # --format speculators refuses DeepSpec-layout DFlash (vLLM's V1 runner would read it one slot off); the
    # --format deepspec folder is refused by this CPU build under either method. (vLLM's V2 GPU runner serves
    # it with method dspark, whose sample_from_anchor layout is ours; not run here: no GPU.)
    assert reason in probe[name]["error"], probe[name]
    with pytest.raises(SpeculatorsFormatError, match="one slot off"):
        to_speculators_folder(draft_dir=built["drafts"]["dflash_qwen3"], output_dir=tmp_path / "spec")
    assert not (tmp_path / "spec").exists()
    assert probe["_facts"]["dflash_refuses_sample_from_anchor"]  # ... and its V2 runner refuses the layout


@pytest.mark.vllm
def test_vllm_refuses_a_gated_markov_head(probe):
    # vLLM ignores markov_head_type and builds the vanilla head; the gated head's gate_proj has no home
    # there. Refused or silently dropped, the served draft would not be ours (to_vllm_folder refuses it).
    result = probe["dspark_qwen3_gated"]
    assert "error" in result or result["load"]["no_home"], result


# ----------------------------------------------------------------------------- same outputs as our draft


def our_outputs(folder: Path, inputs_file: Path) -> dict:
    draft = load_any_draft(folder, dtype=torch.float32).eval()
    x = torch.load(inputs_file)
    with torch.no_grad():
        fc_out = draft.fc(x["aux"][None])
        context = draft.context_features(x["aux"][None])
        rope = rotary_cos_sin(draft.rotary_emb, context, x["ctx_positions"][None], DRAFT_LAYER_TYPE)
        kv = [
            tuple(t[0].transpose(0, 1) for t in project_kv(layer.self_attn, context, rope))  # [T, hkv, d]
            for layer in draft.layers
        ]
        k_with_layer0_norm = []  # what vLLM's fused CPU path computes (layer 0's k_norm weight everywhere)
        for layer in draft.layers:
            attn = copy.deepcopy(layer.self_attn)
            attn.k_norm.load_state_dict(draft.layers[0].self_attn.k_norm.state_dict())
            k_with_layer0_norm.append(project_kv(attn, context, rope)[0][0].transpose(0, 1))
        mask = torch.ones(1, G, T + G, dtype=torch.bool)  # a block sees all earlier context and itself
        hidden = draft.block_hidden(
            block_ids=x["block_ids"][None],
            block_positions=x["block_positions"][None],
            context=context,
            context_positions=x["ctx_positions"][None],
            mask=mask,
            backend="eager",
        )[0]
        base = draft.base_logits(hidden)
        bias = None
        if draft.markov_head is not None:
            bias = draft.markov_head.step(hidden, x["prev_tokens"], None)[0]
        conf = draft.confidence(hidden, x["prev_tokens"])
    return {
        "fc_out": fc_out[0],
        "context_kv": kv,
        "k_with_layer0_norm": k_with_layer0_norm,
        "hidden": hidden,
        "base_logits": base,
        "markov_bias": bias,
        "confidence": None if conf is None else torch.sigmoid(conf),
        "cap": getattr(draft.config, "final_logit_softcapping", None),
    }


def close(a, b, what):
    assert a.shape == b.shape, f"{what}: {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a.float() - b.float()).abs().max().item()
    assert err < 1e-4 * max(1.0, b.abs().max().item()), f"{what}: max abs difference {err}"


@pytest.mark.vllm
@pytest.mark.parametrize("name", ["dspark_qwen3", "dflash_qwen3", "dspark_gemma4"])
def test_vllm_modules_compute_what_our_draft_computes(probe, built, name):
    vllm = loaded(probe, name)["forward"]
    kind = "gemma4" if "gemma4" in name else "qwen3"
    ours = our_outputs(built["drafts"][name], built["inputs"][kind])
    close(vllm["fc_out"], ours["fc_out"], "fc")
    for i, (k, v) in enumerate(ours["context_kv"]):  # hidden_norm, k/v projections, k_norm (v_norm), rotary
        close(vllm["context_k"][i], k, f"layer {i} context keys")
        close(vllm["context_v"][i], v, f"layer {i} context values")
        # vLLM's fused precompute (what serving runs) agrees on values, and on keys for layer 0. For later
        # layers its CPU rms_norm kernel applies layer 0's k_norm weight (the [layers, head_dim] weight of
        # the grouped call is not indexed per layer): accepted as that known CPU behaviour or as ours.
        close(vllm["fused_context_v"][i], v, f"layer {i} context values (fused path)")
        fused_k = vllm["fused_context_k"][i]
        if i == 0 or not torch.allclose(fused_k, k, atol=1e-4):
            close(fused_k, ours["k_with_layer0_norm"][i], f"layer {i} context keys (fused path)")
    close(vllm["hidden"], ours["hidden"], "post-norm block hidden states")
    close(vllm["base_logits"], ours["base_logits"], "base logits (lm_head, soft-capped for Gemma 4)")
    if name == "dflash_qwen3":  # the exported all-zero rank-1 head adds exactly nothing
        assert ours["markov_bias"] is None and torch.count_nonzero(vllm["markov_bias"]) == 0
    elif ours["cap"]:
        # Gemma 4: vLLM's markov_bias goes through the soft-capping LogitsProcessor (tanh(b/cap)*cap, the
        # dense sampling path of its DSpark speculator); DeepSpec adds the raw bias. Equal only while
        # |bias| << cap; pinned here so a change on either side shows up.
        cap = ours["cap"]
        close(vllm["markov_bias"], torch.tanh(ours["markov_bias"] / cap) * cap, "Markov bias (soft-capped)")
        assert (vllm["markov_bias"] - ours["markov_bias"]).abs().max() > 1.0
    else:
        close(vllm["markov_bias"], ours["markov_bias"], "Markov bias")
    if ours["confidence"] is not None:
        close(vllm["confidence"], ours["confidence"], "confidence")
    else:
        assert vllm["confidence"] is None


# ----------------------------------------------------------------------------- the speculators format in vLLM


def tensor_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return sorted(fh.keys())


@pytest.mark.vllm
@pytest.mark.parametrize(
    "name, method, cls",
    [
        ("dspark_qwen3_speculators", "dspark", "Qwen3DSparkForCausalLM"),
        ("eagle3_qwen3_speculators", "eagle3", "Eagle3Qwen3ForCausalLM"),
    ],
)
def test_vllm_loads_our_speculators_exports(probe, built, name, method, cls):
    result = loaded(probe, name)
    load = result["load"]
    assert result["method"] == method and result["hf_config_class"] == "SpeculatorsConfig"
    assert load["class"] == cls, load["class"]
    assert result["aux_layer_ids"] == [i + 1 for i in LAYER_IDS]
    assert load["not_written"] == (["model.mask_embedding"] if cls.startswith("Qwen3") else load["not_written"])
    assert all(n == "model.mask_embedding" for n in load["not_written"]), load["not_written"]
    ours = tensor_names(built["speculators"][name.removesuffix("_speculators")])
    assert sorted(load["consumed"]) == ours
    assert load["misplaced"] == [] and load["no_home"] == [] and sorted(load["placed"]) == ours
    hf = result["hf"]
    if method == "dspark":  # DeepSpec's layout: slot k predicts p+k+1, the anchor is sampled from
        assert hf["sample_from_anchor"] is True and hf["dspark_bonus_anchor"] is False
        assert hf["target_layer_ids"] == LAYER_IDS and hf["markov_rank"] == 8 and hf["block_size"] == G
    else:
        assert hf["norm_before_residual"] is False and result["num_speculative_tokens"] == 7  # ttt_length


@pytest.mark.vllm
def test_vllm_serve_on_a_speculators_folder_finds_the_target(probe, built):
    result = probe["serve_eagle3_speculators"]
    assert "error" not in result, result.get("traceback")
    assert result["model"] == str(built["targets"]["qwen3"])  # from speculators_config.verifier.name_or_path
    spec = result["speculative_config"]
    assert spec["method"] == "eagle3" and spec["num_speculative_tokens"] == 7
    assert spec["model"] == str(built["speculators"]["eagle3_qwen3"])


@pytest.mark.vllm
def test_vllm_computes_the_same_dspark_draft_from_both_formats(probe):
    a, b = loaded(probe, "dspark_qwen3")["forward"], loaded(probe, "dspark_qwen3_speculators")["forward"]
    for key in ("fc_out", "hidden", "base_logits", "markov_bias", "confidence"):
        assert torch.equal(a[key], b[key]), key


def our_eagle3_outputs(folder: Path, inputs_file: Path) -> dict:
    draft = load_any_draft(folder, dtype=torch.float32).eval()
    x = torch.load(inputs_file)
    with torch.no_grad():
        fused = draft.fuse(x["aux"][None])
        out = draft.step(
            hidden=fused,
            token_embeds=draft.embed(x["tokens"][None]),
            positions=x["positions"][None],
            caches=[([], []) for _ in draft.layers],
            backend="eager",
            mask=ttt_mask(step=0, length=T, device="cpu")[None],
        )
        logits = draft.base_logits(draft.norm(out))
    return {"fc_out": fused[0], "hidden": draft.norm(out)[0], "logits": logits[0]}


@pytest.mark.vllm
def test_vllm_eagle3_computes_what_our_eagle3_draft_computes(probe, built):
    vllm = loaded(probe, "eagle3_qwen3_speculators")["forward"]
    ours = our_eagle3_outputs(built["speculators"]["eagle3_qwen3"], built["inputs"]["eagle3"])
    close(vllm["fc_out"], ours["fc_out"], "fc")
    close(vllm["hidden"], ours["hidden"], "post-norm hidden states (layer 0 over [embeds ; features], causal)")
    close(vllm["logits"], ours["logits"], "logits")


@pytest.fixture(scope="module")
def speculators_probe(vllm_python, built):
    """The speculators package's own classes on our exports (tests/speculators_probe.py, one process)."""
    folders = {name: str(folder) for name, folder in built["speculators"].items()}
    folders_file, out_file = built["base"] / "speculators.json", built["base"] / "speculators_out.json"
    folders_file.write_text(json.dumps(folders))
    proc = subprocess.run(
        [vllm_python, str(ROOT / "tests" / "speculators_probe.py"), str(folders_file), str(out_file)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=built["base"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    if proc.returncode != 0 and "No module named 'speculators'" in proc.stderr:
        skip_or_fail(f"`import speculators` fails with {vllm_python}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(out_file.read_text())


@pytest.mark.vllm
@pytest.mark.parametrize(
    "name, config_class, model_class",
    [
        ("dspark_qwen3", "DSparkSpeculatorConfig", "DSparkDraftModel"),
        ("eagle3_qwen3", "Eagle3SpeculatorConfig", "Eagle3DraftModel"),
    ],
)
def test_speculators_package_loads_our_exports(speculators_probe, name, config_class, model_class):
    result = speculators_probe[name]
    assert "error" not in result, result.get("traceback")
    assert result["config_class"] == config_class and result["model_class"] == model_class
    fields = result["fields"]
    key = "eagle_aux_hidden_state_layer_ids" if name.startswith("eagle3") else "aux_hidden_state_layer_ids"
    assert fields[key] == [i + 1 for i in LAYER_IDS]
    if not name.startswith("eagle3"):
        assert fields["sample_from_anchor"] is True and fields["block_size"] == G
    # Its model has exactly our tensors plus the two it never saves, every value as we wrote it (embedding and
    # LM head included: it reloads them from the verifier, and ours are the verifier's), nothing left NaN.
    assert result["extra"] == ["verifier_lm_head.weight", "verifier_norm.weight"]
    assert result["lacking"] == [] and result["differ"] == [] and result["nan"] == []


@pytest.mark.vllm
def test_speculators_package_cannot_hold_gemma4_layers(speculators_probe):
    # Its DSpark model builds Qwen 3 decoder layers whatever transformer_layer_config says; our Gemma 4
    # export round-trips through DeepSpec but does not fit there (export_draft.py prints this caveat).
    result = speculators_probe["dspark_gemma4"]
    assert "error" in result or result["lacking"] or result["differ"], result


# ----------------------------------------------------------------------------- to_vllm_folder (no vLLM needed)


def test_to_vllm_folder_gives_dflash_a_zero_markov_head(built):
    out = built["dflash_vllm"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3DSparkModel"] and config["markov_rank"] == 1
    assert config["sample_from_anchor"] is True
    from safetensors.torch import load_file

    theirs, ours = (
        load_file(str(out / "model.safetensors")),
        load_file(str(built["drafts"]["dflash_qwen3"] / "model.safetensors")),
    )
    assert set(theirs) - set(ours) == {"markov_head.markov_w1.weight", "markov_head.markov_w2.weight"}
    assert all(torch.equal(theirs[k], v) for k, v in ours.items())
    assert not theirs["markov_head.markov_w1.weight"].any() and not theirs["markov_head.markov_w2.weight"].any()


@pytest.mark.parametrize(
    "name, match",
    [("dspark_qwen3_gated", "only the vanilla Markov head"), ("dspark_gemma4_no_k_eq_v", "attention_k_eq_v")],
)
def test_to_vllm_folder_refuses_what_vllm_cannot_serve(built, tmp_path, name, match):
    with pytest.raises(VllmExportError, match=match):
        to_vllm_folder(draft_dir=built["drafts"][name], output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_to_vllm_folder_refuses_eagle3_and_its_own_folder(built, tmp_path):
    eagle = tmp_path / "eagle3"
    eagle.mkdir()
    (eagle / "config.json").write_text(json.dumps({"architectures": ["Qwen3Eagle3Model"]}))
    with pytest.raises(VllmExportError, match="speculators format"):
        to_vllm_folder(draft_dir=eagle, output_dir=tmp_path / "out")
    src = built["drafts"]["dspark_qwen3"]
    with pytest.raises(VllmExportError, match="writing it would destroy the input"):
        to_vllm_folder(draft_dir=src, output_dir=src)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(VllmExportError, match="overwrite=True"):
        to_vllm_folder(draft_dir=src, output_dir=tmp_path / "full")
