"""Flex attention's forward on CPU (torch 2.13 has no CPU backward for it) equals SDPA, through the masks training
builds (DSpark's block-sparse ``training_mask``, Eagle3's TTT mask), compiled as training compiles it, in fp32
and under bf16 autocast; and Eagle3's 7 TTT key lengths, over several sequence lengths, stay far below dynamo's
recompile limit (past it flex would silently run uncompiled)."""

import pytest
import torch

from deepspec.models import build_draft, draft_config_from_target, sample_anchors
from deepspec.recipes import model_recipe
from references import H, V
from shared_targets import draft_math_target_config

# Relative L2 error of the logits. bf16 rounds q/k/v and the attention probabilities, and SDPA and flex round
# at different places; fp32 leaves only the summation order.
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def draft_of(algorithm: str, **model):
    mask_token_id = None if algorithm == "eagle3" else 3
    recipe = model_recipe(algorithm, target="unused", target_layer_ids=[0, 1, 3], mask_token_id=mask_token_id)
    torch.manual_seed(0)
    return build_draft(draft_config_from_target(draft_math_target_config("qwen3"), dict(recipe, **model))).eval()


def rows(length: int, *, seed: int):
    """Two rows of ``length`` tokens, the second right-padded by 3; the loss mask on each row's answer part."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (2, length), generator=g)
    loss_mask = torch.zeros(2, length, dtype=torch.long)
    loss_mask[0, length // 4 :] = 1
    loss_mask[1, length // 3 : length - 3] = 1
    attention_mask = torch.arange(length)[None] < torch.tensor([length, length - 3])[:, None]
    return ids, torch.randn(2, length, 3 * H, generator=g), loss_mask, attention_mask


def flex_and_sdpa(forward, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``forward(backend)`` under flex attention (compiled, as in training) and under SDPA."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return forward("flex").float(), forward("sdpa").float()


def eagle3_logits(draft, length: int, precision: str):
    ids, hidden, loss_mask, attention_mask = rows(length, seed=length)
    return flex_and_sdpa(
        lambda backend: (
            draft.forward_train(
                input_ids=ids,
                hidden_states=hidden,
                loss_mask=loss_mask,
                attention_mask=attention_mask,
                attention_backend=backend,
            ).logits
        ),
        precision,
    )


def flex_compiled_entries() -> int:
    """Graphs dynamo holds for flex attention: what its recompile limit counts."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from torch.nn.attention.flex_attention import flex_attention

    return len(_debug_get_cache_entry_list(flex_attention.__code__))


def test_eagle3_ttt_stays_far_below_the_flex_recompile_limit():
    """7 key lengths per sequence length, 3 sequence lengths: every length change compiles once as a symbol
    (and the first mask of more than one 128-token block once); a third length compiles nothing."""
    torch._dynamo.reset()  # the recompile limit counts per function: Eagle3's entries alone
    draft = draft_of("eagle3", ttt_length=7)
    entries = []
    for length in (24, 40, 56):
        flex, sdpa = eagle3_logits(draft, length, "fp32")
        assert rel_l2(flex, sdpa) < TOLERANCE["fp32"], length
        entries.append(flex_compiled_entries())
    print(f"Eagle3 TTT 7: compiled flex graphs after sequence lengths 24, 40, 56: {entries}")
    assert 0 < entries[-1] <= torch._dynamo.config.recompile_limit - 3, entries
    assert entries[-1] == entries[-2], f"a new sequence length recompiled flex attention: {entries}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_flex_forward_equals_sdpa_through_the_training_masks(precision):
    torch._dynamo.reset()  # a dtype is compiled in: fresh entries, so the limit below is this test's alone
    dspark = draft_of("dspark", num_draft_layers=2, block_size=4, num_anchors=5)
    ids, hidden, loss_mask, _ = rows(40, seed=1)
    anchors, valid = sample_anchors(loss_mask, num_anchors=5, block_size=4, generator=torch.Generator().manual_seed(0))
    flex, sdpa = flex_and_sdpa(
        lambda backend: (
            dspark.forward_train(
                input_ids=ids,
                hidden_states=hidden,
                loss_mask=loss_mask,
                anchors=anchors,
                anchor_valid=valid,
                attention_backend=backend,
            ).logits
        ),
        precision,
    )
    errors = {"dspark": rel_l2(flex, sdpa)}
    errors["eagle3"] = rel_l2(*eagle3_logits(draft_of("eagle3", ttt_length=7), 40, precision))
    print(f"flex vs SDPA {precision}: relative L2 error of the logits {errors}")
    assert max(errors.values()) < TOLERANCE[precision], errors
    assert 0 < flex_compiled_entries() < torch._dynamo.config.recompile_limit  # compiled flex was compared
