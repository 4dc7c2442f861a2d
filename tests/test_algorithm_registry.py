"""The algorithm registry: every stage reads the algorithm from ``deepspec.algorithms`` and nowhere else.

The proof is a fourth algorithm registered from here, with no other change to the package: its draft
spec (deepspec.draft_specs), its draft class and its registry entry; a block drafter under its own
architecture name, trained with CE + L1 and no heads. It validates, trains,
saves, loads back as itself and decodes losslessly through eval.py.
"""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

import eval as eval_cli
from deepspec import algorithms, draft_specs
from deepspec.algorithms import dflash, dspark
from deepspec.models import DSparkDraftModel, load_draft
from deepspec.run_config import ConfigError, load_config
from deepspec.training.checkpoint import latest_checkpoint
from deepspec.training.metrics import read_metrics
from deepspec.training.trainer import TrainingError, check_trainer_name
from tinyrun import tiny_run

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deepspec_train_entry", ROOT / "train.py")
train_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_entry)
LAYERS = [0, 1]


class ToyDraftModel(DSparkDraftModel):
    """A fourth algorithm's draft class: the block drafter's layers under an architecture of its own."""

    draft_architecture = "Toy"


# A fourth algorithm's spec (what its draft saves and checks: the block drafter's fields, no heads) ...
TOY_SPEC = dataclasses.replace(draft_specs.DFLASH, name="toy", architecture="Toy", is_saved_as=lambda config: True)
# ... and its registry entry (the block drafter's loss, metrics and proposer; a CE + L1 recipe).
TOY = dataclasses.replace(
    dflash.ALGORITHM,
    spec=TOY_SPEC,
    recipe=lambda *, target, target_layer_ids, mask_token_id=None: {
        **dspark.block_recipe(
            target=target, target_layer_ids=target_layer_ids, mask_token_id=mask_token_id, heads=False
        ),
        "algorithm": "toy",
        "ce_loss_alpha": 0.5,
        "l1_loss_alpha": 0.5,
    },
    trainer_name="ToyTrainer",
)


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(draft_specs.SPECS, "toy", TOY_SPEC)
    monkeypatch.setitem(algorithms.ALGORITHMS, "toy", TOY)
    yield TOY


def test_registry_entries_are_complete():
    assert set(algorithms.ALGORITHMS) == set(draft_specs.SPECS)  # every spec has its entry, and back
    for name, algorithm in algorithms.ALGORITHMS.items():
        assert algorithm.name == name and algorithm.spec is draft_specs.SPECS[name]
        for part in (algorithm, algorithm.spec):
            for field in dataclasses.fields(part):
                assert getattr(part, field.name) is not None, (name, field.name)
        model = algorithm.recipe(target="t", target_layer_ids=[0, 1], mask_token_id=3)
        assert model["algorithm"] == name
        algorithm.check(model, prefix="model.", error=ConfigError)  # the recipe passes its own validator
    assert algorithms.architectures() == ("DSpark", "Eagle3")


def test_unknown_algorithm_and_trainer_name():
    with pytest.raises(ConfigError, match=r"model.algorithm must be one of \('dspark', 'dflash', 'eagle3'\)"):
        load_config(ROOT / "config/dspark/dspark_tiny.py", opts=["model.algorithm=medusa"])
    cfg = load_config(ROOT / "config/dflash/dflash_tiny.py", opts=["train.trainer_cls=DSparkTrainer"])
    check_trainer_name(cfg)  # an older config naming the right trainer still works
    cfg = load_config(ROOT / "config/dflash/dflash_tiny.py", opts=["train.trainer_cls=Eagle3Trainer"])
    with pytest.raises(
        TrainingError, match="train.trainer_cls=Eagle3Trainer trains eagle3, not model.algorithm=dflash"
    ):
        check_trainer_name(cfg)


def test_a_fourth_algorithm_is_one_registry_entry(toy_registered, tmp_path):
    run = tiny_run(tmp_path / "run", layers=LAYERS, n=24, batch_size=8)
    out = tmp_path / "ckpt"
    model = TOY.recipe(target=run["target"], target_layer_ids=LAYERS, mask_token_id=3)
    opts = [f"model.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in model.items()]
    opts += [
        "model.num_draft_layers=1",
        "model.num_anchors=8",
        "train.local_batch_size=2",
        "train.global_batch_size=4",
        "train.max_train_steps=4",
        "logging.logging_steps=1",
        "logging.checkpointing_steps=4",
        f"logging.checkpoint_dir={out}",
        f"logging.tensorboard_dir={out}/tb",
    ]
    cfg = load_config(ROOT / "config/dflash/dflash_tiny.py", opts=opts)
    assert cfg.model.algorithm == "toy" and cfg.model.l1_loss_alpha == 0.5
    train_entry.run_training(cfg, cache_dir=run["cache"], device="cpu", progress=False)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["l1"] > 0 and r["loss"] == r["loss"] for r in records)  # the block drafter's metrics
    step = latest_checkpoint(out)
    saved = json.loads((Path(step) / "config.json").read_text())
    assert saved["architectures"] == ["Qwen3ToyModel"]
    draft = load_draft(step)
    assert draft.config.algorithm == "toy" and type(draft.config).__name__ == "Qwen3ToyDraftConfig"

    data = tmp_path / "eval"
    data.mkdir()
    (data / "gsm8k.jsonl").write_text(json.dumps({"turns": ["def f3(x):"]}) + "\n")
    res = tmp_path / "res"
    argv = ["--target_name_or_path", run["target"], "--draft_name_or_path", str(step), "--eval-data-dir", str(data)]
    argv += ["--tasks", "gsm8k", "--max-new-tokens", "10", "--temperature", "0", "--output-dir", str(res)]
    argv += ["--dtype", "fp32"]  # compared with an fp32 reference below (auto may pick bf16 by a probe)
    assert eval_cli.main([*argv, "--save-outputs", "--no-progress"]) == 0

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepspec.eval.runner import encode_prompt, stop_token_ids

    tok = AutoTokenizer.from_pretrained(run["target"])
    target = AutoModelForCausalLM.from_pretrained(run["target"], dtype=torch.float32).eval()
    [row] = [json.loads(line) for line in (res / "outputs.jsonl").read_text().splitlines()]
    ids = encode_prompt(tok, "def f3(x):")
    ref = target.generate(
        torch.tensor([ids]),
        max_new_tokens=10,
        do_sample=False,
        eos_token_id=stop_token_ids(tok, target),
        pad_token_id=0,
    )[0, len(ids) :].tolist()
    assert row["token_ids"] == ref
