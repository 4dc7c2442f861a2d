"""The draft's forward cost per round: the FLOP count against a hand count, and the eval decode's metering."""

import statistics

import pytest
import torch

from deepspec.algorithms import build_proposer
from deepspec.decoding.engine import speculative_generate
from deepspec.decoding.target_runner import TargetRunner
from deepspec.eval.draft_cost import MeteredProposer, per_round
from shared_targets import decoding_draft, decoding_target

VOCAB = 50
# The decoding sizes (tests/shared_targets.py): H 32, MLP 64, 2 query heads and 1 key/value head of 16, so the
# query width is 32 and the key/value width 16. Drafts: target layers [0, 1] (fc in = 2·32), γ = 4; DSpark and
# DFlash with 2 layers, Markov rank 8; Eagle3 with 1 layer whose q/k/v read [embeds ; features] (2·32 wide).
H, MLP, Q, KV, G = 32, 64, 32, 16, 4
LAYER = 2 * (H * Q + 2 * H * KV + Q * H + 3 * H * MLP)  # q, k, v, o, gate + up + down: 18432 FLOPs per token
LM_HEAD = 2 * H * VOCAB


@pytest.fixture(scope="module")
def target():
    return decoding_target("qwen3", VOCAB)


def hand_parallel(*, cached: int, new: int, markov: bool) -> tuple[int, int]:
    """(extend, propose) FLOPs of a 2-layer block drafter, counted by hand."""
    extend = new * (2 * (2 * H) * H + 2 * (2 * 2 * H * KV))  # fc, then k and v of each layer on the context
    block = 2 * (G * LAYER + 4 * Q * G * (cached + G))  # 2 layers, G queries over the cache + the block
    heads = G * LM_HEAD
    if markov:  # W2 (rank 8 -> V) and the confidence head on [h ; W1 e] (40 -> 1) per slot
        heads += G * (2 * 8 * VOCAB + 2 * (H + 8))
    return extend, block + heads


def hand_eagle3(*, cached: int, new: int) -> tuple[int, int]:
    layer = 2 * (2 * H * Q + 2 * 2 * H * KV + Q * H + 3 * H * MLP)  # q/k/v read 2H: 22528 per token
    extend = new * (2 * (2 * H) * H + layer) + 4 * Q * new * (cached + new)
    chain = sum(layer + 4 * Q * (cached + s) for s in range(1, G))  # steps 1..γ-1, one token each
    return extend, G * LM_HEAD + chain


@pytest.mark.parametrize("algo", ["dspark", "dflash", "eagle3"])
def test_flops_per_round_match_a_hand_count(target, algo):
    proposer = build_proposer(decoding_draft(target, algo, gamma=G))
    for cached, new in ((0, 5), (17, 5), (40, 2)):
        want = (
            hand_eagle3(cached=cached, new=new)
            if algo == "eagle3"
            else hand_parallel(cached=cached, new=new, markov=algo == "dspark")
        )
        got = (proposer.extend_flops(new_slots=new, cached_slots=cached), proposer.propose_flops(cached_slots=cached))
        assert got == want
    assert LAYER == 18432


def test_the_decode_meters_every_round(target):
    draft = decoding_draft(target, "dspark", gamma=G)
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    metered = MeteredProposer(build_proposer(draft))
    prompt = [5, 9, 11, 7, 3, 20]
    [gen] = speculative_generate(
        runner=runner,
        proposer=metered,
        prompts=[prompt],
        max_new_tokens=30,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    # Round j drafts over the committed tokens so far (the prompt, then accepted + 1 per round) and extends
    # with the γ + 1 verified slots; the prompt's own extend is not a round.
    want, cached = 0, len(prompt)
    for r in gen.rounds:
        extend, propose = hand_parallel(cached=cached, new=G + 1, markov=True)
        want, cached = want + extend + propose, cached + r["accepted"] + 1
    totals = metered.totals()
    assert totals["rounds"] == len(gen.rounds) > 1 and totals["flops"] == want
    assert len(totals["round_seconds"]) == len(gen.rounds) and all(s > 0 for s in totals["round_seconds"])
    cost = per_round([totals, totals])
    assert cost["flops_per_round"] == want / len(gen.rounds) and cost["rounds"] == 2 * len(gen.rounds)
    assert cost["seconds_per_round"] == pytest.approx(statistics.median(totals["round_seconds"]))  # doubled: same
    assert per_round([]) == {
        "flops_per_round": None,
        "seconds_per_round": None,
        "seconds_per_round_mean": None,
        "rounds": 0,
    }
