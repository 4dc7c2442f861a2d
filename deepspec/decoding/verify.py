"""Speculative sampling: accept-or-resample a drafted block against the target (lossless).

For each row, draft tokens x_1..x_ℓ were sampled from draft distributions q_1..q_ℓ and the target,
run once over [pending, x_1..x_γ], gives p_1..p_{γ+1} (p_k scores x_k; p_{γ+1} follows x_γ).
Left to right, x_k is accepted with probability min(1, p_k(x_k) / q_k(x_k)); at the first
rejection the next token is drawn from normalize(max(p_k − q_k, 0)); if all ℓ are accepted a bonus
token is drawn from p_{ℓ+1}. The committed tokens are then distributed exactly as the target's own
samples (Leviathan et al. 2023; Chen et al. 2023).

Temperature 0 is the same code with one-hot distributions (:func:`probs_from_logits`): a draft
token is accepted iff it is the target's argmax, and the residual is the target's argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def probs_from_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sampling distribution [..., V] at ``temperature`` (0 = one-hot argmax), float32 or wider."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits are sampled in fp32
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(dtype)
    return torch.softmax(logits.to(dtype) / temperature, dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs`` [..., V] (exact argmax for one-hot rows)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


@dataclass
class Verdict:
    num_accepted: torch.Tensor  # [B] accepted draft tokens n_r <= proposal_len_r
    next_token: torch.Tensor  # [B] the resampled token (rejection) or the bonus token (all accepted)


def verify_block(
    *,
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    proposal_len: torch.Tensor,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Rejection-sample a block per row.

    draft_tokens [B, γ]; draft_probs [B, γ, V] (q_k, the distribution x_k was drawn from);
    target_probs [B, γ+1, V]; proposal_len [B] (ℓ_r <= γ: only the first ℓ_r drafts are verified).
    """
    B, G = draft_tokens.shape
    assert target_probs.shape[:2] == (B, G + 1), (
        f"target_probs must be [B, γ+1, V] = [{B}, {G + 1}, V], got {tuple(target_probs.shape)}"
    )
    if G == 0:  # nothing proposed: the target's own next token
        return Verdict(num_accepted=proposal_len.new_zeros(B), next_token=sample(target_probs[:, 0], generator))
    rows = torch.arange(B, device=draft_tokens.device)
    p = target_probs[:, :G].gather(-1, draft_tokens[..., None]).squeeze(-1)  # p_k(x_k)
    q = draft_probs.gather(-1, draft_tokens[..., None]).squeeze(-1)  # q_k(x_k) > 0: x_k was drawn from q_k
    u = torch.rand(B, G, generator=generator, device=p.device)
    accept = (u * q < p) & (torch.arange(G, device=p.device) < proposal_len[:, None])  # u < min(1, p/q)
    n = accept.long().cumprod(dim=-1).sum(dim=-1)  # accepted prefix length

    rejected = n < proposal_len
    p_next = target_probs[rows, n]
    residual = (p_next - draft_probs[rows, n.clamp(max=G - 1)]).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    # Rejection implies some mass where p > q; the fallback only guards float underflow.
    use_residual = (rejected & (mass.squeeze(-1) > 0))[:, None]
    dist = torch.where(use_residual, residual / mass.clamp_min(1e-30), p_next)
    return Verdict(num_accepted=n, next_token=sample(dist, generator))
