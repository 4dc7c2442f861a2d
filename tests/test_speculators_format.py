"""The speculators format: export_draft.py --format speculators, the exact round trip back, importing others' folders.

vLLM's and the speculators package's own loaders are checked on these exports in tests/test_vllm_loader.py.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepspec.export.speculators import (
    SpeculatorsFormatError,
    from_speculators_config,
    load_any_draft,
    to_speculators_folder,
)
from deepspec.models import DraftLoadError, build_draft, draft_config_from_target, load_draft
from deepspec.training.checkpoint import LATEST_NAME, save_checkpoint
from deepspec.tiny_models import model_from_config
from badinput import fingerprint, refused, run_entry
from shared_targets import export_target_config

SCRIPT = "scripts/export/export_draft.py"
LAYER_IDS = [0, 1, 2]
# The same tiny targets the vLLM loader test exports (Gemma 4 with k=v attention).
TARGETS = {"qwen3": export_target_config("qwen3"), "gemma4": export_target_config("gemma4_k_eq_v")}
MASK = {"qwen3": 3, "gemma4": 4}
ALGORITHMS = {
    "dspark": dict(
        algorithm="dspark",
        markov_rank=8,
        markov_head_type="gated",
        confidence_head_alpha=1.0,
        confidence_head_with_markov=True,
        num_draft_layers=2,
    ),
    "dflash": dict(algorithm="dflash", markov_rank=0, num_draft_layers=2),
    "eagle3": dict(algorithm="eagle3", num_draft_layers=1, ttt_length=5, step_loss_decay=0.7),
}


def saved_draft(root: Path, family: str, algorithm: str, **overrides) -> Path:
    torch.manual_seed(0)
    model = dict(
        ALGORITHMS[algorithm],
        target_layer_ids=LAYER_IDS,
        **{"block_size": 4, "num_anchors": 16, "mask_token_id": MASK[family], **overrides},
    )
    draft = build_draft(draft_config_from_target(TARGETS[family], model))
    with torch.no_grad():
        for p in draft.parameters():
            p.normal_(0.0, 0.1)
    save_checkpoint(
        root=root,
        step=3,
        model=draft,
        model_state=draft.state_dict(),
        training_state={"step": 3},
        config={"model": {"target_model_name_or_path": "Qwen/Qwen3-8B"}},
    )
    return root / LATEST_NAME


@pytest.mark.parametrize("family", ["qwen3", "gemma4"])
@pytest.mark.parametrize("algorithm", ["dspark", "eagle3"])  # DFlash: below (not exported in DeepSpec's layout)
def test_round_trip_is_exact(tmp_path, family, algorithm):
    src = saved_draft(tmp_path / "run", family, algorithm)
    out = tmp_path / "spec"
    result = run_entry(SCRIPT, ["--draft", src, "--format", "speculators", "--output", out])
    assert result.rc == 0, result.output
    spec = json.loads((out / "config.json").read_text())
    ours = json.loads((src / "config.json").read_text())
    # What the speculators format says, by its own field names.
    assert spec["speculators_model_type"] == algorithm
    assert spec["architectures"] == [
        {"dspark": "DSparkSpeculator", "dflash": "DFlashSpeculator", "eagle3": "Eagle3Speculator"}[algorithm]
    ]
    key = "eagle_aux_hidden_state_layer_ids" if algorithm == "eagle3" else "aux_hidden_state_layer_ids"
    assert spec[key] == [1, 2, 3]
    assert spec["transformer_layer_config"]["model_type"] == ours["model_type"]
    assert spec["transformer_layer_config"]["num_hidden_layers"] == ours["num_hidden_layers"]
    assert spec["draft_vocab_size"] == ours["vocab_size"] and spec["target_hidden_size"] == 64
    verifier = spec["speculators_config"]["verifier"]
    assert verifier["name_or_path"] == "Qwen/Qwen3-8B"  # from the checkpoint's train_config.json
    tokens = spec["speculators_config"]["proposal_methods"][0]["speculative_tokens"]
    if algorithm == "eagle3":
        assert tokens == 5 and spec["norm_before_residual"] is False
    else:
        assert tokens == 4 and spec["sample_from_anchor"] is True and spec["block_size"] == 4
        assert spec["markov_rank"] == 8
    # Tensors bit-equal, same names.
    a, b = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    # Back to ours: the same config.json and the same tensors.
    back = load_any_draft(out)
    back.save_pretrained(tmp_path / "back")
    again = json.loads((tmp_path / "back" / "config.json").read_text())
    assert again == ours
    c = load_file(tmp_path / "back" / "model.safetensors")
    assert c.keys() == a.keys() and all(torch.equal(a[k], c[k]) for k in a)
    # What the tool tells the user about serving it.
    if (family, algorithm) in (("qwen3", "dspark"),):
        assert "note: vLLM cannot serve this folder: markov_head_type='gated'" in result.output
    elif (family, algorithm) == ("qwen3", "eagle3"):
        assert '"method": "eagle3"' in result.output
    else:
        assert "note: vLLM cannot serve this folder" in result.output


DFLASH_REFUSED = (
    "DFlash in DeepSpec's block layout (sample_from_anchor: true, slot k predicts token p+k+1) has no speculators "
    "export that an engine decodes right: vLLM's dflash method takes slot 0 for the bonus token"
)


@pytest.mark.parametrize("family", ["qwen3", "gemma4"])
def test_dflash_in_deepspec_layout_is_not_exported_to_speculators(tmp_path, family):
    # vLLM's V1 runner would load the folder silently and decode it one slot off (issue 31): no such folder.
    src = saved_draft(tmp_path / "run", family, "dflash")
    before = fingerprint([tmp_path / "run"])
    result = run_entry(SCRIPT, ["--draft", src, "--format", "speculators", "--output", tmp_path / "spec"])
    refused(result, DFLASH_REFUSED, code=2)
    assert "Export it with --format deepspec and serve it with method dspark" in result.output
    assert not (tmp_path / "spec").exists() and fingerprint([tmp_path / "run"]) == before
    with pytest.raises(SpeculatorsFormatError, match="one slot off"):
        to_speculators_folder(draft_dir=src, output_dir=tmp_path / "spec")
    assert not (tmp_path / "spec").exists()


def legacy_dflash_folder(tmp_path: Path, monkeypatch, family: str = "qwen3") -> tuple[Path, Path]:
    """(our DFlash draft, the speculators folder earlier versions exported from it, sample_from_anchor: true)."""
    import dataclasses

    from deepspec.algorithms import ALGORITHMS

    src = saved_draft(tmp_path / "run", family, "dflash")
    dflash = ALGORITHMS["dflash"]
    old = dataclasses.replace(dflash.speculators, export_refused=lambda config: None)
    with monkeypatch.context() as m:
        m.setitem(ALGORITHMS, "dflash", dataclasses.replace(dflash, speculators=old))
        return src, to_speculators_folder(draft_dir=src, output_dir=tmp_path / "legacy")


def test_a_legacy_dflash_speculators_folder_still_reads_exactly(tmp_path, monkeypatch):
    # DeepSpec decodes such a folder right (its layout is ours), so an import is not refused; re-exporting it
    # to the speculators format is, and --format deepspec is the way out.
    src, legacy = legacy_dflash_folder(tmp_path, monkeypatch)
    spec = json.loads((legacy / "config.json").read_text())
    assert spec["speculators_model_type"] == "dflash" and spec["sample_from_anchor"] is True
    back = load_any_draft(legacy)
    back.save_pretrained(tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    a, c = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert c.keys() == a.keys() and all(torch.equal(a[k], c[k]) for k in a)
    refused(
        run_entry(SCRIPT, ["--draft", legacy, "--format", "speculators", "--output", tmp_path / "x"]), "one slot off"
    )
    assert run_entry(SCRIPT, ["--draft", legacy, "--format", "deepspec", "--output", tmp_path / "vllm"]).rc == 0


def test_dflash_in_the_engines_layout_exports_and_reads_back_exactly(tmp_path):
    # sample_from_anchor false (slot 0 = the bonus token, block_size - 1 drafts): what vLLM's dflash method reads.
    src = saved_draft(tmp_path / "run", "qwen3", "dflash", sample_from_anchor=False, block_size=5)
    result = run_entry(SCRIPT, ["--draft", src, "--format", "speculators", "--output", tmp_path / "spec"])
    assert result.rc == 0, result.output
    assert '"method": "dflash"' in result.output
    spec = json.loads((tmp_path / "spec" / "config.json").read_text())
    assert spec["speculators_model_type"] == "dflash" and spec["sample_from_anchor"] is False
    assert spec["block_size"] == 5 and spec["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 4
    back = load_any_draft(tmp_path / "spec")
    back.save_pretrained(tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    a, c = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert c.keys() == a.keys() and all(torch.equal(a[k], c[k]) for k in a)


def test_a_foreign_engine_layout_folder_reads_in_its_layout(tmp_path):
    from deepspec.algorithms import build_proposer

    folder = foreign_folder(tmp_path, sample_from_anchor=False)  # speculators' fill-in layout (vLLM's default)
    target = tmp_path / "target"
    model_from_config(export_target_config("qwen3")).save_pretrained(target)
    draft = load_any_draft(folder, frozen_target=str(target))
    assert draft.config.sample_from_anchor is False and not draft.samples_from_anchor
    assert build_proposer(draft).gamma == draft.config.block_size - 1 == 3


def test_speculators_folder_converts_to_the_vllm_dspark_folder(tmp_path):
    src = saved_draft(tmp_path / "run", "qwen3", "dspark", markov_head_type="vanilla")
    spec = to_speculators_folder(draft_dir=src, output_dir=tmp_path / "spec", dtype=torch.bfloat16)
    assert json.loads((spec / "config.json").read_text())["transformer_layer_config"]["torch_dtype"] == "bfloat16"
    assert all(v.dtype == torch.bfloat16 for v in load_file(spec / "model.safetensors").values())
    for name, folder in (("from_ours", src), ("from_spec", spec)):
        rc = run_entry(
            SCRIPT, ["--draft", folder, "--format", "deepspec", "--output", tmp_path / name, "--dtype", "bf16"]
        )
        assert rc.rc == 0, rc.output
    a, b = (
        load_file(tmp_path / "from_ours" / "model.safetensors"),
        load_file(tmp_path / "from_spec" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (json.loads((tmp_path / n / "config.json").read_text()) for n in ("from_ours", "from_spec"))
    assert ca == cb


def foreign_folder(tmp_path: Path, **changes) -> Path:
    """A speculators DSpark folder as another tool writes it: no deepspec key, verifier_norm, identity
    d2t / t2d, no embed_tokens / lm_head (engines share the target's)."""
    src = saved_draft(tmp_path / "run", "qwen3", "dspark", markov_head_type="vanilla")
    out = to_speculators_folder(draft_dir=src, output_dir=tmp_path / "foreign")
    config = json.loads((out / "config.json").read_text())
    config.pop("deepspec")
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
    state = load_file(out / "model.safetensors")
    vocab = TARGETS["qwen3"].vocab_size
    state.pop("embed_tokens.weight"), state.pop("lm_head.weight")
    state.update(
        {
            "verifier_norm.weight": torch.ones(64),
            "d2t": torch.zeros(vocab, dtype=torch.long),
            "t2d": torch.ones(vocab, dtype=torch.bool),
        }
    )
    save_file(state, str(out / "model.safetensors"))
    return out


def test_foreign_folder_loads_with_the_target_filling_the_frozen_pieces(tmp_path):
    folder = foreign_folder(tmp_path)
    with pytest.raises(DraftLoadError, match="is a speculators-format folder; load it with deepspec.export.load_any"):
        load_draft(folder)  # the models read our layout only; the loader above them reads both
    with pytest.raises(DraftLoadError, match="has no embed_tokens.weight / lm_head.weight .* pass the target"):
        load_any_draft(folder)
    target = tmp_path / "target"
    model_from_config(export_target_config("qwen3")).save_pretrained(target)
    draft = load_any_draft(folder, frozen_target=str(target))
    from deepspec.target_files import load_frozen_target_pieces

    embed, head = load_frozen_target_pieces(str(target))
    assert torch.equal(draft.embed_tokens.weight, embed) and torch.equal(draft.lm_head.weight, head)
    assert draft.config.target_layer_ids == LAYER_IDS and draft.config.num_anchors == 512  # our default
    assert draft.config.markov_rank == 8 and draft.config.enable_confidence_head
    # export_draft.py takes it too, with --target.
    refused(run_entry(SCRIPT, ["--draft", folder, "--output", tmp_path / "x"]), "pass the target", code=2)
    rc = run_entry(SCRIPT, ["--draft", folder, "--output", tmp_path / "vllm", "--target", target])
    assert rc.rc == 0, rc.output
    assert set(load_file(tmp_path / "vllm" / "model.safetensors")) >= {"embed_tokens.weight", "lm_head.weight"}
    # A target of another width would fill pieces that load and draft garbage: refused, naming both shapes.
    wide = tmp_path / "wide_target"
    model_from_config(export_target_config("qwen3", hidden_size=128)).save_pretrained(wide)
    refused(
        run_entry(SCRIPT, ["--draft", folder, "--output", tmp_path / "wide", "--target", wide]),
        f"target {wide} has an embedding of ({TARGETS['qwen3'].vocab_size}, 128) (vocab x hidden), but the draft",
        code=2,
    )
    assert not (tmp_path / "wide").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"draft_vocab_size": 1000}, "draft_vocab_size 1000 < the target's 4096"),
        ({"speculators_model_type": "mtp"}, "speculators_model_type 'mtp'; DeepSpec reads"),
        ({"aux_hidden_state_layer_ids": None}, "no aux_hidden_state_layer_ids"),
    ],
)
def test_foreign_folders_without_an_equivalent_are_refused(tmp_path, changes, message):
    folder = foreign_folder(tmp_path, **changes)
    before = fingerprint([folder])
    refused(
        run_entry(SCRIPT, ["--draft", folder, "--output", tmp_path / "out", "--format", "speculators"]), message, code=2
    )
    assert not (tmp_path / "out").exists() and fingerprint([folder]) == before


def test_reduced_vocabulary_tables_are_refused(tmp_path):
    folder = foreign_folder(tmp_path)
    state = load_file(folder / "model.safetensors")
    state["d2t"][5] = 7
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(DraftLoadError, match="d2t / t2d map a reduced draft vocabulary"):
        load_any_draft(folder, frozen_target="unused")


def test_eagle3_without_an_equivalent_is_refused(tmp_path):
    src = saved_draft(tmp_path / "run", "qwen3", "eagle3", num_draft_layers=2)
    refused(
        run_entry(SCRIPT, ["--draft", src, "--format", "speculators", "--output", tmp_path / "out"]),
        "an Eagle3 draft with 2 layers: ours fuses [embeds ; features] in every layer",
        code=2,
    )
    assert not (tmp_path / "out").exists()
    one = saved_draft(tmp_path / "one", "qwen3", "eagle3")
    spec = to_speculators_folder(draft_dir=one, output_dir=tmp_path / "spec")
    config = json.loads((spec / "config.json").read_text())
    for flag in ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output"):
        with pytest.raises(SpeculatorsFormatError, match=f"{flag}=true"):
            from_speculators_config(dict(config, **{flag: True}))
    no_flag = {k: v for k, v in config.items() if k != "norm_before_residual"}  # vLLM reads a missing flag as true
    with pytest.raises(SpeculatorsFormatError, match="norm_before_residual=true"):
        from_speculators_config(no_flag)


def test_verifier_flag_and_output_rules(tmp_path):
    src = saved_draft(tmp_path / "run", "qwen3", "eagle3")
    target = tmp_path / "target"
    target.mkdir()
    (target / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    out = to_speculators_folder(draft_dir=src, output_dir=tmp_path / "spec", verifier_name_or_path=str(target))
    verifier = json.loads((out / "config.json").read_text())["speculators_config"]["verifier"]
    assert verifier == {"name_or_path": str(target), "architectures": ["Qwen3ForCausalLM"]}
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    refused(
        run_entry(SCRIPT, ["--draft", src, "--format", "speculators", "--output", tmp_path / "full"]),
        "exists and is not empty; pass --overwrite",
        code=2,
    )
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    refused(
        run_entry(SCRIPT, ["--draft", src, "--format", "speculators", "--output", src]),
        "writing it would destroy the input",
        code=2,
    )
