"""scripts/eval/engine_check.py: the comparison against hand-made records, every τ-doctor check (pass and warn),
the refusals, and (vLLM's environment) tiny Eagle3 and engine-layout DFlash drafts decoded by vLLM exactly as
eval.py decodes them.

The vLLM test's draft is built, not trained: a random 4-layer target whose LM head has five text tokens
that can win (every embedding carries a constant in dimension 0 that the other rows penalise), and a
one-layer Eagle3 draft that passes the target's layer-2 state through (fc picks it, attention and MLP add
nothing, the target's final norm): it predicts the pending token again, so it is right on the target's
runs of a repeated token and wrong at their ends. The block drafters' mask token embeds like token 300's
LM-head row and their layers leave dimension 0 alone, so their drafts lean to 300, the target's most
frequent token. That gives every position some acceptance in seconds.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from badinput import fingerprint, refused, run_entry
from deepspec.eval.doctor import PASS, WARN, DoctorInputs, run_doctor
from deepspec.eval.engine_check import DIFFERS, EXACT, WITHIN, compare_run, first_difference, format_comparison
from deepspec.models import build_draft, draft_config_from_target
from deepspec.target_files import load_frozen_target_pieces
from deepspec.tiny_target import build_random_tiny_target
from deepspec.training.checkpoint import CONFIG_NAME, LATEST_NAME, save_checkpoint
from shared_targets import EXPORT_SIZES
from vllm_env import vllm_interpreter

SCRIPT = "scripts/eval/engine_check.py"
ACTIVE = [300, 301, 302, 303, 304]  # the tokens the target's LM head lets win
PROMPTS = ["What is 3 + 4?", "def add(a, b):", "Name a colour."]


# ----------------------------------------------------------------------------- the comparison (no engine)


def request(task, i, accepted, drafted, tokens, prompt=None):
    out = {"task": task, "prompt_index": i, "per_step_accepted": accepted, "per_step_drafted": drafted}
    return dict(out, token_ids=tokens, **({"prompt_token_ids": prompt} if prompt is not None else {}))


def test_compare_run_hand_computed():
    ours = [request("a", 0, [2, 0], [2, 2], [5, 6, 7, 8]), request("b", 0, [1], [2], [9, 9])]
    theirs = [request("a", 0, [2, 0], [2, 2], [5, 6, 7, 8], [1, 2]), request("b", 0, [0, 0], [2, 2], [9, 8], [1, 3])]
    c = compare_run(
        ours=ours,
        theirs=theirs,
        gamma=2,
        greedy=[[5, 6, 7, 8], [9, 9]],
        prompt_ids=[[1, 2], [1, 4]],
        seconds={"ours": 2.0, "vllm": 3.0},
        tolerance=0.01,
    )
    # τ = mean(accepted + 1): a (3 + 1)/2 both; b ours 2/1, vLLM (1 + 1)/2; pooled ours 6/3, vLLM 6/4.
    assert c["ours"]["tau"] == {"a": 2.0, "b": 2.0} and c["vllm"]["tau"] == {"a": 2.0, "b": 1.0}
    assert c["ours"]["tau_pooled"] == pytest.approx(2.0) and c["vllm"]["tau_pooled"] == pytest.approx(1.5)
    assert c["tau_difference"]["b"] == pytest.approx(-1.0) and c["tau_difference"]["a"] == 0.0
    # accepted >= 1: ours 2 of 3 rounds, vLLM 1 of 4; >= 2: ours 1/3, vLLM 1/4
    assert c["ours"]["accept_rate_by_position"] == pytest.approx([2 / 3, 1 / 3])
    assert c["vllm"]["accept_rate_by_position"] == pytest.approx([1 / 4, 1 / 4])
    assert c["ours"]["tokens_per_second"] == pytest.approx(3.0) and c["vllm"]["tokens_per_second"] == pytest.approx(2.0)
    assert (c["identical_rounds"], c["identical_outputs"], c["prompts_tokenized_alike"]) == (1, 1, 1)
    assert c["outputs_equal_target_greedy"] == {"ours": 2, "vllm": 1}
    assert c["first_difference"] == {
        "task": "b",
        "prompt_index": 0,
        "round": 0,
        "ours": [1, 2],
        "vllm": [0, 2],
        "first_token": 1,
    }
    assert c["agreement"] == DIFFERS
    text = format_comparison(c, method="eagle3", dtype="fp32", temperature=0.0, batch_size=1)
    assert "first difference: b prompt 0, round 0 (eval.py [accepted, drafted] [1, 2], vLLM [0, 2])" in text
    assert "outputs part at token 1" in text and "agreement: differs (tolerance 0.01)" in text
    assert "outputs = the target's greedy output: eval.py 2/2, vLLM 1/2" in text
    # Same rounds and outputs: exact; different rounds but τ within the tolerance: within tolerance.
    same = compare_run(ours=ours, theirs=ours, gamma=2, greedy=None, prompt_ids=[[], []], seconds={}, tolerance=0)
    assert same["agreement"] == EXACT and same["first_difference"] is None
    shuffled = [request("a", 0, [0, 2], [2, 2], [5, 6, 7, 8]), ours[1]]
    near = compare_run(ours=ours, theirs=shuffled, gamma=2, greedy=None, prompt_ids=[[], []], seconds={}, tolerance=0)
    assert near["agreement"] == WITHIN and near["first_difference"]["round"] == 0


def test_first_difference_in_outputs_alone_and_in_a_longer_log():
    a = request("t", 3, [1, 1], [2, 2], [1, 2, 3, 4])
    assert first_difference([a], [dict(a, token_ids=[1, 2, 3])])["round"] is None  # same rounds, one token short
    assert first_difference([a], [dict(a, token_ids=[1, 2, 3])])["first_token"] == 3
    longer = dict(a, per_step_accepted=[1, 1, 0], per_step_drafted=[2, 2, 2])
    diff = first_difference([a], [longer])
    assert (diff["round"], diff["ours"], diff["vllm"]) == (2, None, [0, 2])


# ----------------------------------------------------------------------------- a target, drafts, the doctor


def engine_target(folder: Path) -> Path:
    """A random target whose greedy output runs over ACTIVE with repeats (module docstring)."""
    target = build_random_tiny_target(
        output_dir=folder, seed=0, head_dim=32, tie_word_embeddings=False, initializer_range=0.3, **EXPORT_SIZES
    )
    state = load_file(target / "model.safetensors")
    g = torch.Generator().manual_seed(5)
    embed = state["model.embed_tokens.weight"]
    embed[:, 0] = 1.0
    head = torch.randn(embed.shape, generator=g) * 1e-3
    head[:, 0] = -1.0
    head[ACTIVE] = torch.randn(len(ACTIVE), embed.shape[1], generator=g) * 10.0
    head[ACTIVE] -= head[ACTIVE].mean(0)
    head[ACTIVE, 0] = 1.0
    state["lm_head.weight"] = head
    embed[3] = head[ACTIVE[0]] * 0.05  # the mask token (never in text) leans a block draft's mask slots to 300
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def saved_draft(root: Path, target: Path, algorithm: str, **model) -> Path:
    """A draft on ``target``'s layers 0-2 with its frozen pieces, saved as training saves it; Eagle3 passes the
    target's layer-2 state through (module docstring)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(target)
    torch.manual_seed(1)
    extra = dict(ttt_length=4) if algorithm == "eagle3" else dict(block_size=4, num_anchors=4, mask_token_id=3)
    model = dict(algorithm=algorithm, num_draft_layers=1, target_layer_ids=[0, 1, 2], **{**extra, **model})
    draft = build_draft(draft_config_from_target(config, model))
    with torch.no_grad():
        for p in draft.parameters():
            p.normal_(0.0, 0.1)
        if algorithm == "eagle3":
            h = config.hidden_size
            draft.fc.weight.zero_()
            draft.fc.weight[:, 2 * h :] = torch.eye(h)
            for layer in draft.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
        else:  # the mask embedding's dimension 0 survives the layers: the block drafts among ACTIVE
            for layer in draft.layers:
                layer.self_attn.o_proj.weight[0] = 0.0
                layer.mlp.down_proj.weight[0] = 0.0
        draft.norm.weight.copy_(load_file(target / "model.safetensors")["model.norm.weight"])
    embed, head = load_frozen_target_pieces(str(target))
    draft.load_frozen_weights(embed=embed, lm_head=head)
    train_config = {"data": {"chat_template": "qwen3"}, "model": {"target_model_name_or_path": str(target)}}
    save_checkpoint(
        root=root, step=1, model=draft, model_state=draft.state_dict(), training_state={"step": 1}, config=train_config
    )
    return root / LATEST_NAME


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("engine_check")
    target = engine_target(base / "target")
    data = base / "data"
    data.mkdir()
    (data / "gsm8k.jsonl").write_text("".join(json.dumps({"turns": [p]}) + "\n" for p in PROMPTS))
    heads = dict(markov_rank=8, markov_head_type="vanilla", confidence_head_alpha=1.0)
    drafts = {
        a: saved_draft(base / a, target, a, **(heads if a == "dspark" else {})) for a in ("eagle3", "dspark", "dflash")
    }
    # DFlash in the engines' layout (slot 0 = the bonus token): a block of 5 drafts 4 tokens.
    drafts["dflash_engine"] = saved_draft(
        base / "dflash_engine", target, "dflash", sample_from_anchor=False, block_size=5
    )
    return {"base": base, "target": target, "data": data, "drafts": drafts}


def doctor(built, algorithm="eagle3", **kwargs):
    checks = run_doctor(
        DoctorInputs(
            target=str(kwargs.pop("target", built["target"])),
            draft=str(kwargs.pop("draft", built["drafts"][algorithm])),
            **kwargs,
        )
    )
    return {c.name: c for c in checks}


def test_doctor_passes_a_draft_that_fits(built):
    for algorithm in ("eagle3", "dspark", "dflash"):
        checks = doctor(built, algorithm)
        assert list(checks) == [
            "frozen_pieces",
            "mask_token",
            "layer_ids",
            "chat_template",
            "sampling",
            "num_speculative_tokens",
            "anchor_layout",
        ]
        assert all(c.status == PASS and c.fix is None for c in checks.values()), [c.line() for c in checks.values()]
    assert doctor(built, "dspark")["mask_token"].detail == "mask_token_id 3 (the qwen3 family's)"
    assert doctor(built)["num_speculative_tokens"].detail == "4 (the draft was trained for 4)"


def copy_draft(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_doctor_warns_about_frozen_pieces_other_than_the_targets(built, tmp_path):
    draft = copy_draft(built["drafts"]["eagle3"], tmp_path / "draft")
    state = load_file(draft / "model.safetensors")
    state["lm_head.weight"][7, 3] += 0.5
    save_file(state, str(draft / "model.safetensors"))
    check = doctor(built, draft=draft)["frozen_pieces"]
    assert check.status == WARN
    assert "the draft folder's lm_head.weight (max |diff| 0.5) differ from the target's" in check.detail
    assert "eval.py decodes with the target's" in check.detail and "export the draft from a checkpoint" in check.fix


def test_doctor_warns_about_another_mask_token(built, tmp_path):
    draft = copy_draft(built["drafts"]["dspark"], tmp_path / "draft")
    config = json.loads((draft / "config.json").read_text())
    (draft / "config.json").write_text(json.dumps(dict(config, mask_token_id=17)))
    check = doctor(built, draft=draft)["mask_token"]
    assert check.status == WARN and check.detail.startswith("mask_token_id 17, but the qwen3 family's is 3")
    assert check.fix.startswith("train with model.mask_token_id=3")


def test_doctor_warns_about_layers_of_another_depth_or_cache(built, tmp_path):
    deeper = build_random_tiny_target(
        output_dir=tmp_path / "deeper", seed=0, head_dim=32, **dict(EXPORT_SIZES, num_hidden_layers=6)
    )
    check = doctor(built, target=deeper)["layer_ids"]
    assert check.status == WARN and "the draft was trained on a 4-layer target, this one has 6 layers" in check.detail
    cache = tmp_path / "cache"
    cache.mkdir()
    manifest = {"layer_ids": [0, 1], "target_fingerprint": "dstf1:another", "target_model": "other/model"}
    (cache / "manifest.json").write_text(json.dumps(manifest))
    check = doctor(built, target_cache_dir=str(cache))["layer_ids"]
    assert check.status == WARN
    assert f"the target cache {cache} holds layers [0, 1], not [2]" in check.detail
    assert f"the target cache {cache} was built from another target (other/model)" in check.detail


def test_doctor_warns_about_thinking_and_another_chat_template(built, tmp_path):
    data = tmp_path / "regen.jsonl"
    rows = [
        {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>hm</think>yo"}]},
        {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "plain"}]},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    check = doctor(built, train_data_paths=[str(data)])["chat_template"]
    assert check.status == WARN and "1 of 2 regenerated assistant turns read hold think blocks" in check.detail
    assert "--disable-thinking" in check.fix
    assert doctor(built, train_data_paths=[str(data)], enable_thinking=True)["chat_template"].status == PASS
    draft = copy_draft(built["drafts"]["eagle3"], tmp_path / "draft")
    (draft / CONFIG_NAME).write_text(json.dumps({"data": {"chat_template": "gemma4"}}))
    check = doctor(built, draft=draft)["chat_template"]
    assert check.status == WARN and "data.chat_template='gemma4', this target's is 'qwen3'" in check.detail


def test_doctor_warns_about_the_serving_defaults_of_generation_config(built, tmp_path):
    target = copy_draft(built["target"], tmp_path / "target")
    gen = json.loads((target / "generation_config.json").read_text())
    (target / "generation_config.json").write_text(json.dumps(dict(gen, top_k=20, top_p=0.8, temperature=0.6)))
    check = doctor(built, target=target)["sampling"]
    assert check.status == WARN and "generation_config.json (top_k=20, top_p=0.8)" in check.detail
    assert "serve with --generation-config vllm" in check.fix


def test_doctor_warns_about_more_tokens_than_trained_and_another_layout(built):
    check = doctor(built, num_speculative_tokens=9)["num_speculative_tokens"]
    assert check.status == WARN and check.detail.startswith("9, but the draft was trained to propose 4 per round")
    check = doctor(built, "dflash", method="dflash")["anchor_layout"]
    assert check.status == WARN and "vLLM's 'dflash' method reads slot 0 as the bonus token" in check.detail
    assert check.fix == "serve it with method 'dspark' (export_draft.py --format deepspec)"
    check = doctor(built, "dspark", method="eagle3")["anchor_layout"]
    assert check.status == WARN and check.detail == "vLLM's method 'eagle3' does not serve a dspark draft"
    assert doctor(built, "dflash", method="dspark")["anchor_layout"].status == PASS
    engine_layout = doctor(built, "dflash_engine", method="dflash")  # slot 0 = the bonus token: dflash's layout
    assert engine_layout["anchor_layout"].status == PASS
    assert engine_layout["num_speculative_tokens"].detail == "4 (the draft was trained for 4)"  # block 5 - 1


# ----------------------------------------------------------------------------- the tool


def test_doctor_only_prints_the_checks_and_writes_nothing(built, tmp_path):
    before = fingerprint([built["base"]])
    result = run_entry(
        SCRIPT,
        [
            "--target",
            built["target"],
            "--draft",
            built["drafts"]["eagle3"],
            "--doctor-only",
            "--output-dir",
            tmp_path / "o",
        ],
    )
    assert result.rc == 0, result.output
    assert "[doctor] PASS  anchor_layout:" in result.output and "[doctor] 7 passed, 0 warning(s)" in result.output
    assert not (tmp_path / "o").exists() and fingerprint([built["base"]]) == before
    # The method a user serves with, checked against the draft's layout: DeepSpec's DFlash under dflash.
    result = run_entry(
        SCRIPT,
        ["--target", built["target"], "--draft", built["drafts"]["dflash"], "--doctor-only", "--method", "dflash"],
    )
    assert result.rc == 0, result.output
    assert "[doctor] WARN  anchor_layout: the draft uses sample_from_anchor=true" in result.output
    assert "fix: serve it with method 'dspark' (export_draft.py --format deepspec)" in result.output


def test_refusals_name_the_cause(built, tmp_path):
    common = ["--target", built["target"], "--eval-data-dir", built["data"], "--tasks", "gsm8k:1", "--no-progress"]
    common += ["--max-new-tokens", 4]
    result = run_entry(
        SCRIPT,
        common
        + ["--draft", built["drafts"]["eagle3"], "--num-speculative-tokens", "2,5", "--output-dir", tmp_path / "a"],
    )
    refused(result, "--num-speculative-tokens 5: this eagle3 draft was trained to propose 4 tokens per round", code=2)
    assert "[doctor] WARN  num_speculative_tokens: 5, but the draft was trained to propose 4" in result.output
    assert not (tmp_path / "a").exists()
    result = run_entry(
        SCRIPT,
        common
        + ["--draft", built["drafts"]["eagle3"], "--vllm-python", tmp_path / "none", "--output-dir", tmp_path / "b"],
    )
    refused(result, f"no vLLM interpreter at {tmp_path / 'none'}; install vLLM's environment with", code=2)
    other = ["--draft", built["drafts"]["eagle3"], "--method", "dflash", "--output-dir", tmp_path / "m"]
    refused(run_entry(SCRIPT, common + other), "--method dflash: the engine check serves this draft with method eagle3")
    assert not (tmp_path / "m").exists()
    # A vLLM build with only the V1 model runner (the CPU wheel) refuses DSpark: said, with what it needs.
    fake = tmp_path / "fake_vllm_python"
    error = {
        "error": "ValidationError: 1 validation error for VllmConfig\n  Value error, Model Runner V1 does not support: "
        "dspark speculative decoding [type=value_error, input_value=ArgsKwargs((), {})]"
    }
    fake.write_text(f"#!/bin/bash\necho '{json.dumps({'vllm_version': '0', 'runs': {'k4': error}})}' > \"$3\"\n")
    fake.chmod(0o755)
    result = run_entry(
        SCRIPT, common + ["--draft", built["drafts"]["dspark"], "--vllm-python", fake, "--output-dir", tmp_path / "c"]
    )
    refused(
        result,
        "vLLM refused run k4: Value error, Model Runner V1 does not support: dspark speculative decoding; this "
        "vLLM build runs its V1 model runner",
        code=2,
    )
    assert "DSpark and DeepSpec-layout DFlash need the V2 GPU runner" in result.output
    assert json.loads((tmp_path / "c" / "vllm_job.json").read_text())["runs"][0]["method"] == "dspark"


# ----------------------------------------------------------------------------- vLLM itself


@pytest.mark.vllm
@pytest.mark.parametrize("name, method", [("eagle3", "eagle3"), ("dflash_engine", "dflash")])
def test_vllm_decodes_tiny_drafts_exactly_as_eval_does(built, tmp_path, name, method):
    # Eagle3 (speculators format, method eagle3) and DFlash in the engines' layout (speculators format,
    # method dflash), at K = what they were trained for (4) and at K = 2.
    py = vllm_interpreter()
    out = tmp_path / "check"
    args = ["--target", built["target"], "--draft", built["drafts"][name], "--eval-data-dir", built["data"]]
    args += ["--tasks", "gsm8k", "--max-new-tokens", 24, "--num-speculative-tokens", "4,2", "--output-dir", out]
    result = run_entry(SCRIPT, args + ["--no-progress", "--vllm-python", py], timeout=900)
    assert result.rc == 0, result.output[-4000:]
    report = json.loads((out / "engine_check.json").read_text())
    assert report["engine"]["method"] == method and report["dtype"] == "fp32" and report["temperature"] == 0
    assert [run["num_speculative_tokens"] for run in report["runs"]] == [4, 2]  # as trained, and fewer
    for run in report["runs"]:
        n = len(PROMPTS)
        assert run["agreement"] == EXACT and run["first_difference"] is None
        assert run["identical_rounds"] == run["identical_outputs"] == run["prompts_tokenized_alike"] == n
        assert run["outputs_equal_target_greedy"] == {"ours": n, "vllm": n}
        assert run["ours"]["tau"] == run["vllm"]["tau"] and run["ours"]["tau_pooled"] > 1.3
        rates = run["vllm"]["accept_rate_by_position"]
        assert rates == run["ours"]["accept_rate_by_position"] and min(rates) > 0.1  # every position is exercised
        ours = json.loads((out / f"deepspec_k{run['num_speculative_tokens']}" / "results.json").read_text())
        assert ours["spec_decode"]["num_accepted_tokens_per_pos"] == [
            round(r * ours["spec_decode"]["num_drafts"]) for r in rates
        ]
    assert "agreement: exact" in result.output and os.path.isdir(out / "vllm_draft")
