"""Speculative decoding is lossless, for every algorithm.

(a) temperature 0: output is token-for-token the target's greedy output (transformers ``generate``),
    batch 1 and batched, Qwen3, Gemma 4, Llama 3, Qwen3-MoE and Qwen3.5 (recurrent layers) targets;
(b) temperature 1: the empirical distribution of the first generated tokens matches the target's
    exact distribution computed by enumeration, also with a confidence threshold;
(c) the incremental proposers (KV caches across rounds, rejected slots masked and cropped) give the
    same draft distributions as the training forward over the committed prefix.
"""

import pytest
import torch

from deepspec.decoding.engine import speculative_generate, target_generate
from deepspec.decoding.scheduler import CostTable, CumulativeThreshold, PerSlotThreshold, PrefixScheduler
from deepspec.algorithms import SpeculativeTokensError, build_proposer
from deepspec.decoding.proposers import TargetSelfProposer
from deepspec.decoding.target_runner import TargetRunner
from deepspec.decoding.verify import Verdict, verify_block
from references import exact_token_marginals, hf_greedy, tv_bound
from shared_targets import DECODING_ALGOS, DECODING_FAMILIES, decoding_draft, decoding_target


PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [3] * 11]


@pytest.mark.parametrize("family", list(DECODING_FAMILIES))
@pytest.mark.parametrize("algo", list(DECODING_ALGOS))
def test_greedy_is_the_targets_greedy_output(family, algo):
    target = decoding_target(family, 48)
    draft = decoding_draft(target, algo)
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    reference = [hf_greedy(target, p, 24) for p in PROMPTS]
    assert [
        g.tokens for g in target_generate(runner=runner, prompts=PROMPTS, max_new_tokens=24, temperature=0)
    ] == reference
    for batch in (1, 3):
        out = []
        for i in range(0, len(PROMPTS), batch):
            out += speculative_generate(
                runner=runner,
                proposer=build_proposer(draft),
                prompts=PROMPTS[i : i + batch],
                max_new_tokens=24,
                temperature=0,
            )
        assert [g.tokens for g in out] == reference, f"{algo} batch {batch}"
        rounds = [r for g in out for r in g.rounds]
        assert all(0 <= r["accepted"] <= r["proposal_len"] == 4 for r in rounds)
        # every committed token is accounted for: tokens = first (prefill) + sum(accepted + 1), truncated
        for g in out:
            assert len(g.tokens) <= 1 + sum(r["accepted"] + 1 for r in g.rounds)


@pytest.mark.parametrize("algo", list(DECODING_ALGOS))
def test_fewer_speculative_tokens_than_trained_stay_lossless(algo):
    # An engine's num_speculative_tokens K: DSpark / DFlash run a block of K slots, Eagle3 a chain of K steps.
    target = decoding_target("qwen3", 48)
    draft = decoding_draft(target, algo)  # trained for 4 (block_size / ttt_length)
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    reference = [hf_greedy(target, p, 20) for p in PROMPTS]

    def run(k):
        proposer = build_proposer(draft, num_speculative_tokens=k)
        return proposer.gamma, speculative_generate(
            runner=runner, proposer=proposer, prompts=PROMPTS, max_new_tokens=20, temperature=0
        )

    gamma, default = run(None)
    assert gamma == 4
    gamma, same = run(4)  # K = trained: today's rounds exactly
    assert gamma == 4 and [(g.tokens, g.rounds) for g in same] == [(g.tokens, g.rounds) for g in default]
    for k in (3, 1):
        gamma, out = run(k)
        assert gamma == k and [g.tokens for g in out] == reference, f"{algo} K={k}"
        assert all(r["gamma"] == r["proposal_len"] == k for g in out for r in g.rounds)
    with pytest.raises(SpeculativeTokensError, match=f"this {DECODING_ALGOS[algo].get('algorithm', algo)} draft"):
        build_proposer(draft, num_speculative_tokens=5)
    with pytest.raises(SpeculativeTokensError, match="so it takes 1..4; positions past its training"):
        build_proposer(draft, num_speculative_tokens=0)


def test_dspark_in_the_engines_layout_is_lossless():
    target = decoding_target("qwen3", 48)
    draft = decoding_draft(target, "dspark", sample_from_anchor=False)  # block of 5: the bonus slot + 4 drafts
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    out = speculative_generate(
        runner=runner, proposer=build_proposer(draft), prompts=PROMPTS, max_new_tokens=24, temperature=0
    )
    assert [g.tokens for g in out] == [hf_greedy(target, p, 24) for p in PROMPTS]
    assert all(r["gamma"] == 4 and len(r["conf_logits"]) == 4 for g in out for r in g.rounds)


def test_stop_tokens_end_each_request_and_batch_keeps_going():
    target = decoding_target("qwen3", 48)
    draft = decoding_draft(target, "dspark")
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    free = target_generate(runner=runner, prompts=PROMPTS, max_new_tokens=16, temperature=0)
    stop = free[0].tokens[5]  # a token the first request emits
    out = speculative_generate(
        runner=runner,
        proposer=build_proposer(draft),
        prompts=PROMPTS,
        max_new_tokens=16,
        temperature=0,
        stop_token_ids=[stop],
    )
    for g, f in zip(out, free):
        cut = f.tokens.index(stop) + 1 if stop in f.tokens else len(f.tokens)
        assert g.tokens == f.tokens[:cut] and g.stopped == (stop in f.tokens)


def test_target_drafting_for_itself_accepts_everything():
    target = decoding_target("qwen3", 48)
    runner = TargetRunner(target, layer_ids=[0, 1])
    out = speculative_generate(
        runner=runner,
        proposer=TargetSelfProposer(target, gamma=5),
        prompts=PROMPTS[:2],
        max_new_tokens=25,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert all(r["accepted"] == 5 for g in out for r in g.rounds)  # tau = gamma + 1


# -- (b) sampling distribution ----------------------------------------------------------------


def make_policy(name):
    if name == "threshold":  # per-slot, DeepSpec's rule
        return PerSlotThreshold(0.5)
    if name == "cumulative-threshold":
        return CumulativeThreshold(0.2)
    if name == "prefix":  # verify time grows with batch tokens: admits some candidates, not all
        B = list(range(1, 4001, 100))
        return PrefixScheduler(CostTable(batch_tokens=B, steps_per_second=[1.0 / (1 + b / 1000) for b in B]))
    return None


@pytest.mark.parametrize(
    "algo,policy_name",
    [
        ("dspark", None),
        ("dspark", "threshold"),
        ("dspark", "cumulative-threshold"),
        ("dspark", "prefix"),
        ("dflash", None),
        ("dflash_engine_layout", None),
        ("eagle3", None),
    ],
)
def test_sampling_matches_the_targets_distribution(algo, policy_name):
    V, steps, N, batch = 12, 3, 3000, 500
    target = decoding_target("qwen3", V, sharpen=8.0)
    draft = decoding_draft(target, algo, gamma=3)
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    prompt = [2, 3, 4, 5]
    gen = torch.Generator().manual_seed(1234)
    policy = make_policy(policy_name)
    samples, lengths = [], set()
    for _ in range(N // batch):
        out = speculative_generate(
            runner=runner,
            proposer=build_proposer(draft),
            prompts=[prompt] * batch,
            max_new_tokens=steps,
            temperature=1.0,
            policy=policy,
            generator=gen,
        )
        samples += [g.tokens for g in out]
        lengths |= {r["proposal_len"] for g in out for r in g.rounds}
    exact = exact_token_marginals(target, prompt, steps)
    bound = tv_bound(outcomes=V, samples=N)
    for i in range(1, steps):  # token 0 comes from the prefill; tokens 1.. went through verification
        empirical = torch.bincount(torch.tensor([s[i] for s in samples]), minlength=V).double() / N
        tv = 0.5 * (empirical - exact[i]).abs().sum().item()
        assert tv < bound, f"token {i}: TV {tv:.4f} >= {bound:.4f}"
    if policy is not None:
        assert len(lengths) >= 2 and min(lengths) < 3, f"{policy_name} chose lengths {lengths}: not a real exercise"


def test_the_distribution_test_has_power():
    # A verifier that always accepts outputs the draft's distribution, which differs from the target's
    # by far more than the bound: the test above would catch it.
    V = 12
    target = decoding_target("qwen3", V, sharpen=8.0)
    draft = decoding_draft(target, "dflash", gamma=3)
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    import deepspec.decoding.engine as engine

    def accept_all(*, draft_tokens, draft_probs, target_probs, proposal_len, generator=None):
        return Verdict(num_accepted=proposal_len.clone(), next_token=draft_tokens[:, -1])

    original, engine.verify_block = engine.verify_block, accept_all
    try:
        out = speculative_generate(
            runner=runner,
            proposer=build_proposer(draft),
            prompts=[[2, 3, 4, 5]] * 1500,
            max_new_tokens=2,
            temperature=1.0,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        engine.verify_block = original
    exact = exact_token_marginals(target, [2, 3, 4, 5], 2)
    empirical = torch.bincount(torch.tensor([g.tokens[1] for g in out]), minlength=V).double() / len(out)
    assert 0.5 * (empirical - exact[1]).abs().sum().item() > 3 * tv_bound(outcomes=V, samples=3000)


def test_verify_block_hand_example():
    # Two slots, vocab 2. Target (0.7, 0.3) everywhere, draft (0.5, 0.5): drafting token 0 is always
    # accepted (p >= q); drafting token 1 is accepted with prob 0.3 / 0.5 = 0.6, else residual = token 0.
    q = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]).expand(20000, -1, -1)
    p = torch.tensor([[[0.7, 0.3]] * 3]).expand(20000, -1, -1)
    tokens = torch.tensor([[1, 0]]).expand(20000, -1)
    v = verify_block(
        draft_tokens=tokens,
        draft_probs=q,
        target_probs=p,
        proposal_len=torch.full((20000,), 2),
        generator=torch.Generator().manual_seed(0),
    )
    first_ok = (v.num_accepted >= 1).double().mean().item()
    assert abs(first_ok - 0.6) < 0.02
    assert torch.all(v.next_token[v.num_accepted == 0] == 0)  # residual max(p - q, 0) is all on token 0
    assert torch.all(v.num_accepted[v.num_accepted >= 1] == 2)  # token 0 at slot 2 is always accepted


# -- (c) incremental proposers equal the training forward --------------------------------------


class Recorder:
    """Wraps a proposer; remembers (committed sequence, proposal) of every round."""

    def __init__(self, inner):
        self.inner, self.gamma, self.seen = inner, inner.gamma, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def propose(self, **kw):
        prop = self.inner.propose(**kw)
        self.seen.append((list(kw["sequences"][0]), prop))
        return prop


def reference_probs(target, draft, seq, prop):
    committed, pending = seq[:-1], seq[-1]
    p, G = len(committed), prop.tokens.shape[1]
    if draft.config.algorithm == "eagle3":
        ids = torch.tensor([committed + [pending] + prop.tokens[0, : G - 1].tolist()])
        states = target.capture(ids, layer_ids=draft.config.target_layer_ids).hidden_states
        out = draft.forward_train(
            input_ids=ids, hidden_states=states, loss_mask=torch.ones_like(ids), attention_backend="eager", ttt_length=G
        )
        return torch.softmax(out.logits[:, 0, p - 1], -1), None
    if not draft.samples_from_anchor:  # the engines' layout, through the training forward with anchor p
        ids = torch.tensor([committed + [pending] + prop.tokens[0].tolist()])
        states = target.capture(ids, layer_ids=draft.config.target_layer_ids).hidden_states
        out = draft.forward_train(
            input_ids=ids,
            hidden_states=states,
            loss_mask=torch.ones_like(ids),
            anchors=torch.tensor([[p]]),
            attention_backend="eager",
        )
        conf = out.confidence_logits
        return torch.softmax(out.logits[0, 0], -1), (None if conf is None else conf[0, 0])
    states = target.capture(torch.tensor([committed]), layer_ids=draft.config.target_layer_ids).hidden_states
    ctx = draft.context_features(states)
    block = torch.tensor([[pending] + [draft.config.mask_token_id] * (G - 1)])
    mask = torch.ones(1, G, p + G, dtype=torch.bool)
    h = draft.block_hidden(
        block_ids=block,
        block_positions=p + torch.arange(G)[None],
        context=ctx,
        context_positions=torch.arange(p)[None],
        mask=mask,
        backend="eager",
    )
    prev = torch.tensor([[pending] + prop.tokens[0, : G - 1].tolist()])
    logits, conf = draft.heads(h, prev)
    return torch.softmax(logits[0], -1), (None if conf is None else conf[0])


@pytest.mark.parametrize(
    "algo, layout", [(a, {}) for a in DECODING_ALGOS] + [("dspark", {"sample_from_anchor": False})]
)
def test_incremental_proposer_matches_training_forward(algo, layout):
    # DSpark in the engines' layout too: its Markov head's x_{k-1} is the bonus token for slot 1.
    target = decoding_target("qwen3", 48, sharpen=3.0)
    draft = decoding_draft(target, algo, **layout)
    runner = TargetRunner(target, layer_ids=draft.config.target_layer_ids)
    rec = Recorder(build_proposer(draft))
    speculative_generate(
        runner=runner,
        proposer=rec,
        prompts=[PROMPTS[0]],
        max_new_tokens=30,
        temperature=1.0,
        generator=torch.Generator().manual_seed(3),
    )
    assert len(rec.seen) >= 5
    assert any(p.tokens.shape[1] > 0 for _, p in rec.seen)
    for seq, prop in rec.seen:
        probs, conf = reference_probs(target, draft, seq, prop)
        # float64 models, but transformers' eager attention takes its softmax in float32: a last-bit
        # difference between chunked and full forwards can show up at ~1e-7 relative. A cache bug is O(1).
        torch.testing.assert_close(prop.probs[0].double(), probs.double(), rtol=1e-5, atol=1e-7)
        if conf is not None:
            torch.testing.assert_close(prop.conf_logits[0].double(), conf.double(), rtol=1e-5, atol=1e-6)
