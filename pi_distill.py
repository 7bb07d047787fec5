"""
pi_distill.py -- π-Distill (Penaloza et al. 2026, Algorithm 1): one model, two views, trained jointly.

The teacher π_T(o | s, I) sees the privileged information I (the frontier agent's actions) in its prompt;
the student π_S(o | s) is the same weights without it. Episodes are sampled from the teacher, and

    J(θ) = α · J_T + (1 − α) · J_S
    J_T  = E_{o~π_T}[R] − β · KL(π_T ‖ sg π_S)              the teacher does RL, kept close to the student
    J_S  = E_{o~π_T}[(π_S / sg π_T) · R] − c · KL(sg π_T ‖ π_S)   the student learns from the teacher's episodes

sg = stop-gradient. At test time only the student is used. The paper's equation has the student's forward KL
(c = β); its algorithm leaves it out, and so do the defaults here (c = forward_kl = 0).

The defaults are the paper's α = 0 (its best setting on τ-bench retail): only the student term is trained, on the
teacher's episodes, through the clipped ratio ρ_S = π_S / sg π_T, which weights each teacher token by how likely
the student is to write it itself, so a token only the PI explains (the frontier's shortcut user id) teaches
almost nothing. In this world a trained teacher (α = 0.5) pulled the views apart and the student learned more
slowly, and the forward KL, which is not weighted by ρ_S, made the student imitate the teacher's unreproducible
tokens until it wrote nonsense (README, "Results").

    python pi_distill.py                          # the toy world, defaults below, ~4 minutes on a 2-core CPU
    python pi_distill.py --alpha=0.5 --pi_kind=names --out_dir=runs/names
"""
from dataclasses import dataclass

import torch

import agent


@dataclass
class PiDistillConfig(agent.Config):
    out_dir: str = "runs/pi_distill"
    steps: int = 100             # past ~150 rounds the student view drifts and collapses here (README)
    alpha: float = agent.knob(0.0, "weight α of the teacher term; 1 = teacher only, 0 = student only", "[0, 1]")
    alpha_anneal_steps: int = agent.knob(15, "α grows linearly from 0 over this many rounds (the paper)", ">= 0")
    beta: float = agent.knob(0.25, "KL penalty β in the teacher's shaped reward R − β·KL_seq", ">= 0")
    kl_sum: bool = agent.knob(False, "KL_seq summed over the episode's tokens instead of averaged (README)")
    ratio_cap: float = agent.knob(3.0, "dual-clip: bound on ρ_S where the advantage is negative", "> 1")
    forward_kl: float = agent.knob(0.0, "coefficient of the student's KL(sg π_T ‖ π_S) (the paper's equation: β)",
                                   ">= 0")
    leak_penalty: float = agent.knob(0.1, "reward − this per PI keyword the teacher writes (the paper: 0.1)", ">= 0")
    updates_per_round: int = agent.knob(2, "gradient steps on each round of samples (the paper: 2-3)", ">= 1")


LEAK_WORDS = ("secret",)  # the PI block's delimiter word: naming it leaks the PI


def pi_distill_loss(logp_teacher, logp_teacher_old, logp_student, advantages, mask, alpha, eps=0.2,
                    ratio_cap=3.0, kl_forward=None, forward_kl=0.0):
    """The π-Distill loss on per-token tensors [B, T] of log-probs of the sampled (teacher) tokens:

        L = α · L_T + (1 − α) · L_S (+ (1 − α) · forward_kl · KL(sg π_T ‖ π_S)),  each a sum over model tokens / N
        L_T = −Σ min(ρ_T A, clip(ρ_T, 1 − ε, 1 + ε) A),   ρ_T = π_T,θ(o_t) / π_T,old(o_t)   (behaviour policy)
        L_S = −Σ min(ρ_S A, clip(ρ_S, 1 − ε, 1 + ε) A),   ρ_S = π_S,θ(o_t) / sg π_T,θ(o_t)

    with the same episode advantage A [B] for every token, N = Σ mask. Where no clipping is active,
    ∇L_T = −(1/N) Σ A ∇log π_T (the policy gradient of E_{π_T}[A]) and ∇L_S = −(1/N) Σ ρ_S A ∇log π_S, which
    for one-token actions is exactly −∇E_{π_S}[A] (importance sampling); for longer actions the per-token
    ratio is the usual PPO-style approximation of the sequence ratio. ρ_S is unbounded above, so where A < 0
    its term is capped at ratio_cap·|A| (dual-clip); log-ratios are clamped before exp.
    kl_forward: optional per-token KL(sg π_T ‖ π_S) [B, T] (the paper's equation has it, its algorithm not).
    Returns (loss, stats)."""
    n = mask.sum().clamp(min=1)
    loss_T, rho_T, clip_T = agent.clipped_surrogate(logp_teacher, logp_teacher_old, advantages, eps)
    loss_S, rho_S, clip_S = agent.clipped_surrogate(logp_student, logp_teacher.detach(), advantages, eps, ratio_cap)
    per_token = alpha * loss_T + (1 - alpha) * loss_S
    if kl_forward is not None and forward_kl > 0:
        per_token = per_token + (1 - alpha) * forward_kl * kl_forward
    loss = (per_token * mask).sum() / n
    def mean(x):
        return ((x * mask).sum() / n).item()
    return loss, dict(loss=loss.item(), rho_T=mean(rho_T.detach()), rho_S=mean(rho_S.detach()),
                      clip_T=mean(clip_T), clip_S=mean(clip_S))


def leaks(text):
    return sum(text.count(word) for word in LEAK_WORDS)


def micro_batch_losses(run, batches, alpha, shaped):
    """Steps 2-6 on each micro-batch of whole groups (one micro-batch, all the round's episodes, unless
    --micro_batch), yielded as (loss, model tokens, stats) to agent.Run.update, which back-propagates each before
    the next is scored. shaped[i] = (KL_seq, A, keep) of micro-batch i is set at the round's first update and kept."""
    cfg, model, tok = run.cfg, run.model, run.tok
    for i, episodes in enumerate(batches):
        _, mask, logp_teacher_old = agent.batch_continuations(episodes, run.device)
        # 2. score the same tokens in both views: π_T (PI in the prompt) and π_S (no PI), with gradients
        logits_T, logp_T = agent.score(model, tok, episodes, "teacher", cfg.temperature)
        logits_S, logp_S = agent.score(model, tok, episodes, "student", cfg.temperature)
        if shaped[i] is None:
            # 3. shaped reward R' = R − β·KL_seq, KL exact over the vocabulary at each sampled position, detached;
            #    averaged over the episode's tokens (summed, ~5 nats here, β·KL would swamp a 0/1 reward)
            R = torch.tensor([e.reward - cfg.leak_penalty * sum(leaks(t) for t, _ in e.turns) for e in episodes],
                             device=run.device)
            kl_seq = agent.kl_full_vocab(logits_T.detach(), logits_S.detach(), mask)
            if not cfg.kl_sum:
                kl_seq = kl_seq / mask.sum(1).clamp(min=1)
            A = agent.group_advantages(R - cfg.beta * kl_seq, cfg.group_size)
            shaped[i] = kl_seq, A, agent.groups_with_signal(A, cfg.group_size)
        kl_seq, A, keep = shaped[i]
        if not keep.any():  # every group had identical rewards: no signal here
            continue
        kl_forward = agent.kl_per_position(logits_T.detach(), logits_S)[keep] if cfg.forward_kl > 0 else None
        # 4-6. α·(clipped GRPO on ρ_T) + (1 − α)·(clipped ρ_S = π_S / sg π_T), same advantages
        loss, stats = pi_distill_loss(logp_T[keep], logp_teacher_old[keep], logp_S[keep], A[keep], mask[keep], alpha,
                                      cfg.clip_eps, cfg.ratio_cap, kl_forward, cfg.forward_kl)
        yield loss, mask[keep].sum().item(), stats


def train_step(run):
    """One round of Algorithm 1: teacher rollouts, shaped rewards, group advantages, joint update(s)."""
    cfg = run.cfg
    # 1. G teacher episodes for each of the round's tasks, with the PI block in the prompt
    episodes = agent.rollout(run.model, run.tok, cfg, run.sample_tasks(), with_pi=True, generator=run.generator)
    alpha = cfg.alpha * min(1.0, (run.step + 1) / cfg.alpha_anneal_steps) if cfg.alpha_anneal_steps else cfg.alpha
    batches = agent.micro_batches(episodes, cfg)  # [episodes] unless --micro_batch
    shaped = [None] * len(batches)
    for _ in range(cfg.updates_per_round):
        stats = run.update(micro_batch_losses(run, batches, alpha, shaped))
    kl_seq, _, keep = (torch.cat(parts) for parts in zip(*shaped))
    summary = dict(teacher_success=sum(e.reward for e in episodes) / len(episodes), kl=kl_seq.mean().item())
    if not stats:  # every group had identical rewards: no signal this round
        return summary | dict(groups=0.0)
    return summary | dict(alpha=alpha, groups=keep.float().mean().item(), **stats)


if __name__ == "__main__":
    cfg = agent.parse_args(PiDistillConfig)
    agent.Run(cfg, "π-Distill").train(train_step)
