"""
rl.py -- the RL arithmetic both algorithms share: pure functions of tensors, each with its equation.

Shapes: B episodes, L continuation positions (right-padded), V vocabulary entries. A `mask` [B, L] is 1 on the
tokens the model wrote (actions and their end-of-turn token), 0 on prompts, observations and padding.
"""
import torch
import torch.nn.functional as F


def group_advantages(rewards, group_size):
    """A_g = R_g − mean of its group (no division by the std, PAPER.md §3); [B] -> [B], groups consecutive."""
    r = rewards.view(-1, group_size)
    return (r - r.mean(1, keepdim=True)).view(-1)


SIGNAL_EPS = 1e-6  # an advantage this small is float noise from the group's mean, not a signal


def groups_with_signal(advantages, group_size):
    """[B] bool: episodes whose group has a nonzero advantage; the others carry no signal and are dropped."""
    return advantages.view(-1, group_size).abs().amax(1).repeat_interleave(group_size) > SIGNAL_EPS


def clipped_surrogate(logp_new, logp_old, advantages, eps, ratio_cap=None, max_log_ratio=20.0):
    """Per-token PPO term −min(ρ A, clip(ρ, 1 − ε, 1 + ε) A), ρ = exp(logp_new − logp_old), [B, L].
    The advantage is per episode [B] (shared by its tokens) or per token [B, L].
    ratio_cap (dual-clip) bounds −ρ A at −ratio_cap · A where A < 0 and ρ is huge. Log-ratios are clamped
    before exp. Returns (per-token loss, ρ, per-token clipped indicator)."""
    rho = torch.exp((logp_new - logp_old).clamp(-max_log_ratio, max_log_ratio))
    A = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)
    unclipped, clipped = rho * A, rho.clamp(1 - eps, 1 + eps) * A
    loss = -torch.min(unclipped, clipped)
    if ratio_cap is not None:
        loss = torch.where(A < 0, torch.minimum(loss, -ratio_cap * A), loss)
    was_clipped = (clipped < unclipped) | ((A < 0) & (rho > ratio_cap) if ratio_cap is not None else False)
    return loss, rho, was_clipped.float()


def kl_per_position(logits_p, logits_q):
    """Exact KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)) at every position: [B, L, V] -> [B, L]."""
    logp, logq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def entropy_per_position(logits):
    """H(p) = −Σ_v p(v) log p(v) at every position: [B, L, V] -> [B, L]. A policy that stops exploring shows it
    here first."""
    logp = F.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(values, mask):
    """Σ_t mask_t x_t / Σ_t mask_t over the written positions, a float (a logged statistic such as the entropy)."""
    return ((values.detach() * mask).sum() / mask.sum().clamp(min=1)).item()


def mean_entropy(logits, mask):
    """The entropy averaged over the written positions: Σ_t mask_t H_t / Σ_t mask_t, a float (a logged statistic)."""
    return masked_mean(entropy_per_position(logits.detach()), mask)


def kl_per_episode(logits_p, logits_q, mask):
    """Σ_t mask_t · KL(p_t ‖ q_t): the exact KL at every position the model wrote, summed per episode -> [B]."""
    return (kl_per_position(logits_p, logits_q) * mask).sum(-1)


@torch.no_grad()
def ema_update(average, model, decay):
    """θ_avg ← decay · θ_avg + (1 − decay) · θ, parameter by parameter (an EMA teacher follows the model)."""
    for p_avg, p in zip(average.parameters(), model.parameters()):
        p_avg.lerp_(p, 1 - decay)
