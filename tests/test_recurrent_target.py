"""Decoding with a recurrent target (Qwen3.5's Gated DeltaNet layers) stays lossless.

Rejected tokens cannot be masked out of a recurrent state, so the target runner snapshots the state after
every verified position and keeps each row's accepted one (deepspec.decoding.recurrent). Greedy equality
with ``generate`` for every algorithm is in test_decoding.py; here: the rolled-back state equals a fresh
prefill of the committed tokens, the sampling distribution passes the TV test at batch 1 and 3 with rows
accepting different lengths, and without the rollback both checks fail (they have power).
"""

import pytest
import torch

from deepspec.decoding.engine import speculative_generate
from deepspec.algorithms import build_proposer
from deepspec.decoding.proposers import Proposal, TargetSelfProposer
from deepspec.decoding.recurrent import RecurrentStates
from deepspec.decoding.target_runner import TargetRunner
from references import exact_token_marginals, hf_greedy, tv_bound
from shared_targets import decoding_draft, decoding_target


class WrongAt:
    """The target's own greedy drafts with token ``wrong[row][round]`` replaced: row r accepts exactly that
    many drafts in that round, so rows of one batch accept different, known lengths."""

    def __init__(self, target, *, gamma: int, wrong: list[list[int]], vocab: int):
        self.inner, self.gamma, self.wrong, self.vocab, self.round = (
            TargetSelfProposer(target, gamma=gamma),
            gamma,
            wrong,
            vocab,
            0,
        )

    def reset(self, *, batch):
        self.round = 0

    def extend(self, **_):
        pass

    def propose(self, **kw):
        prop = self.inner.propose(**{**kw, "temperature": 0.0})
        tokens = prop.tokens.clone()
        for r in range(tokens.shape[0]):
            k = self.wrong[r][self.round % len(self.wrong[r])]
            if k < self.gamma:
                tokens[r, k] = (tokens[r, k] + 1) % self.vocab
        self.round += 1
        probs = torch.nn.functional.one_hot(tokens, self.vocab).double()
        return Proposal(tokens=tokens, probs=probs, conf_logits=None)

    def crop(self, n):
        pass

    def select_rows(self, rows):
        self.wrong = [self.wrong[i] for i in rows.tolist()]


PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [3] * 11]
WRONG = [[0, 3, 1, 4], [2, 4, 0, 1], [4, 1, 3, 0]]  # per row, per round: where the first wrong draft sits


def committed_state_reference(target, tokens, layer):
    """(conv, recurrent) state of a recurrent layer after a plain cached forward over ``tokens``."""
    from transformers import DynamicCache

    cache = DynamicCache(config=target.config)
    target.model(input_ids=torch.tensor([tokens]), past_key_values=cache, use_cache=True)
    return cache.layers[layer].conv_states[0][0], cache.layers[layer].recurrent_states[0][0]


def test_rows_accepting_different_lengths_keep_their_exact_state():
    target = decoding_target("qwen3_5", 48)
    runner = TargetRunner(target, layer_ids=[0, 1])
    out = speculative_generate(
        runner=runner,
        proposer=WrongAt(target, gamma=4, wrong=WRONG, vocab=48),
        prompts=PROMPTS,
        max_new_tokens=14,
        temperature=0,
    )
    assert [g.tokens for g in out] == [hf_greedy(target, p, 14) for p in PROMPTS]
    for g, wrong in zip(out, WRONG):
        assert [r["accepted"] for r in g.rounds][:3] == wrong[:3]


def test_commit_restores_the_state_of_the_committed_prefix():
    target = decoding_target("qwen3_5", 48)
    runner = TargetRunner(target, layer_ids=[0, 1])
    # One verify round: rows accept 1, 3 and 0 drafts, and every row is then done (max_new_tokens=2).
    out = speculative_generate(
        runner=runner,
        proposer=WrongAt(target, gamma=4, wrong=[[1], [3], [0]], vocab=48),
        prompts=PROMPTS,
        max_new_tokens=2,
        temperature=0,
    )
    assert [[r["accepted"] for r in g.rounds] for g in out] == [[1], [3], [0]]
    # Each row's state is that of its prompt + the prefill token + its accepted drafts, nothing after.
    for row, (prompt, accepted) in enumerate(zip(PROMPTS, [1, 3, 0])):
        seen = prompt + hf_greedy(target, prompt, 5)[: accepted + 1]
        for layer in runner.recurrent.layer_ids:
            conv, recurrent = committed_state_reference(target, seen, layer)
            cache_layer = runner.cache.layers[layer]
            # The delta rule runs in float32 (transformers' kernels), chunked for the reference, token by token
            # here: float32 rounding apart (and the layers above see it). A state one token off differs by O(1).
            torch.testing.assert_close(cache_layer.conv_states[0][row], conv, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(cache_layer.recurrent_states[0][row], recurrent, rtol=1e-5, atol=1e-6)


def test_without_the_rollback_greedy_output_is_wrong():
    target = decoding_target("qwen3_5", 48)
    runner = TargetRunner(target, layer_ids=[0, 1])
    original = RecurrentStates.commit
    RecurrentStates.commit = lambda self, num_valid: None  # keep the state after every fed token
    try:
        out = speculative_generate(
            runner=runner,
            proposer=WrongAt(target, gamma=4, wrong=WRONG, vocab=48),
            prompts=PROMPTS,
            max_new_tokens=14,
            temperature=0,
        )
    finally:
        RecurrentStates.commit = original
    assert [g.tokens for g in out] != [hf_greedy(target, p, 14) for p in PROMPTS]


@pytest.mark.parametrize("batch,samples", [(1, 1200), (3, 3000)])
def test_sampling_matches_the_targets_distribution(batch, samples):
    V, steps = 12, 3
    target = decoding_target("qwen3_5", V, sharpen=8.0)
    draft = decoding_draft(target, "dspark", gamma=3)
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    prompt = [2, 3, 4, 5]
    gen = torch.Generator().manual_seed(1234)
    outs = []
    for _ in range(samples // batch):
        outs += speculative_generate(
            runner=runner,
            proposer=build_proposer(draft),
            prompts=[prompt] * batch,
            max_new_tokens=steps,
            temperature=1.0,
            generator=gen,
        )
    if batch > 1:  # rows of one call accepted different lengths in the same round
        calls = [outs[i : i + batch] for i in range(0, len(outs), batch)]
        assert any(len({g.rounds[0]["accepted"] for g in call}) > 1 for call in calls)
    exact = exact_token_marginals(target, prompt, steps)
    bound = tv_bound(outcomes=V, samples=len(outs))
    for i in range(1, steps):
        empirical = torch.bincount(torch.tensor([g.tokens[i] for g in outs]), minlength=V).double() / len(outs)
        tv = 0.5 * (empirical - exact[i]).abs().sum().item()
        assert tv < bound, f"token {i}: TV {tv:.4f} >= {bound:.4f}"
