"""
opsd.py -- On-Policy Self-Distillation (Penaloza et al. 2026, Algorithm 2): RL on the student with a
reverse-KL penalty toward the same model conditioned on the privileged information.

    J_OPSD(θ) = E_{o~π_S}[R] − β · KL(π_S ‖ sg π_T)

Unlike π-Distill, the *student* samples (no PI in the prompt), the teacher only scores those tokens, the KL
is reverse (student ‖ teacher: mode-seeking, measured where the student goes), and only the student view is
trained: with --teacher=live (the paper) the teacher moves through the shared weights; with the default
--teacher=frozen it is the base model with the PI in its prompt. Why frozen: with a live shared-weight teacher
and a reward that is almost always 0, the cheapest way to lower KL(π_S ‖ π_T) is to make the two views
identical, i.e. to forget the PI (measured: KL → 0.02/token and teacher success 36% → 0% in 100 steps).
Not to be confused with the reward-free self-distillation that Zhao et al. (2026) also call OPSD.
With β = 0 this is plain GRPO on the student: the paper's RL baseline.

    python opsd.py                 # the toy world, defaults below, ~6 minutes on a laptop CPU
    python opsd.py --beta=0        # plain RL
    python opsd.py --teacher=live --out_dir=runs/collapse    # the paper's live teacher: collapses here (README)
"""
import copy
from dataclasses import dataclass

import torch

import agent


@dataclass
class OPSDConfig(agent.Config):
    out_dir: str = "runs/opsd"
    beta: float = agent.knob(0.5, "weight β of the reverse KL toward the teacher; 0 = plain GRPO", ">= 0")
    teacher: str = agent.knob("frozen", "frozen (the base; no collapse) | live (same weights, the paper) | ema",
                              ("frozen", "live", "ema"))
    ema_decay: float = agent.knob(0.99, "with --teacher=ema: the teacher's decay per round", "[0, 1)")
    kl_estimator: str = agent.knob("analytic", "analytic (the paper's loss) | reward | token (see opsd_loss)",
                                   ("analytic", "reward", "token"))


def opsd_loss(logp_student, logp_student_old, advantages, mask, beta, eps=0.2, kl_tokens=None):
    """Clipped GRPO on student samples plus the analytic reverse KL, on per-token tensors [B, T]:

        L = −(1/N) Σ min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) + β (1/N) Σ_t KL(π_S,θ(·|s_t) ‖ sg π_T(·|s_t))
        ρ = π_S,θ(o_t) / π_S,old(o_t),  N = Σ mask

    kl_tokens [B, T] is that full-vocabulary KL at each sampled position, differentiable through the student
    (`agent.kl_per_position(logits_student, logits_teacher.detach())`); pass None for the reward-shaping forms,
    whose KL is already in the advantages [B] or [B, T]:
        reward:  A from R − β Σ_t sg(log π_S(o_t) − log π_T(o_t))   (episode reward; exact gradient of J_OPSD)
        token:   A_t = A − β sg(log π_S(o_t) − log π_T(o_t))         (per token, as on-policy distillation)
    Where clipping is inactive, E[∇L] = −(1/N)·∇E[R] + β/N · E[Σ_t ∇KL_t(s_t)] (analytic, token): the KL's
    gradient at the visited states, not how earlier tokens change which states are visited -- exact for
    one-token actions; the `reward` form also has that part and is exact for any length (see the tests).
    Never back-propagate the sampled log-ratio log π_S(o) − log π_T(o) itself: its expected gradient is zero.
    Returns (loss, stats)."""
    n = mask.sum().clamp(min=1)
    surrogate, rho, clipped = agent.clipped_surrogate(logp_student, logp_student_old, advantages, eps)
    per_token = surrogate + (beta * kl_tokens if kl_tokens is not None else 0)
    loss = (per_token * mask).sum() / n
    def mean(x):
        return ((x * mask).sum() / n).item()
    return loss, dict(loss=loss.item(), rho=mean(rho.detach()), clip=mean(clipped),
                      kl=mean(kl_tokens.detach()) if kl_tokens is not None else float("nan"))


def micro_batch_losses(run, teacher, batches, keeps):
    """The loss of each micro-batch of whole groups of student episodes (one micro-batch, the whole round, unless
    --micro_batch), yielded as (loss, model tokens, stats) to agent.Run.update, which back-propagates each before the
    next is scored. Appends each micro-batch's kept episodes [B] to keeps."""
    cfg, model, tok = run.cfg, run.model, run.tok
    for episodes in batches:
        _, mask, logp_old = agent.batch_continuations(episodes, run.device)
        R = torch.tensor([e.reward for e in episodes], device=run.device)
        with torch.no_grad():  # sg π_T: the teacher view only scores the student's tokens
            logits_T, logp_T = agent.score(teacher, tok, episodes, "teacher", cfg.temperature)
        logits_S, logp_S = agent.score(model, tok, episodes, "student", cfg.temperature)
        log_ratio = (logp_S.detach() - logp_T) * mask          # sampled log π_S − log π_T, as a reward only
        shaped = R - cfg.beta * log_ratio.sum(1) if cfg.kl_estimator == "reward" else R
        A = agent.group_advantages(shaped, cfg.group_size)
        kl_tokens = None
        if cfg.kl_estimator == "analytic":
            kl_tokens = agent.kl_per_position(logits_S, logits_T)
        elif cfg.kl_estimator == "token":
            A = A.unsqueeze(1) - cfg.beta * log_ratio
        keep = torch.ones(len(episodes), dtype=torch.bool, device=run.device)
        if cfg.beta == 0:  # plain GRPO: groups whose rewards are all equal carry no signal
            keep = agent.groups_with_signal(A, cfg.group_size)
        keeps.append(keep)
        if keep.any():
            loss, stats = opsd_loss(logp_S[keep], logp_old[keep], A[keep], mask[keep], cfg.beta, cfg.clip_eps,
                                    None if kl_tokens is None else kl_tokens[keep])
            yield loss, mask[keep].sum().item(), stats


def attach_teacher(run):
    """A frozen or EMA teacher starts as a copy of the model the run starts from; it is saved with the run."""
    if run.cfg.teacher != "live":
        run.extra["teacher"] = copy.deepcopy(run.model).requires_grad_(False)


def train_step(run):
    """One round of Algorithm 2: student rollouts, teacher scoring of the same tokens, GRPO + β·KL update."""
    cfg = run.cfg
    teacher = run.model if cfg.teacher == "live" else run.extra["teacher"]
    episodes = agent.rollout(run.model, run.tok, cfg, run.sample_tasks(), with_pi=False, generator=run.generator)
    keeps = []
    loss_stats = run.update(micro_batch_losses(run, teacher, agent.micro_batches(episodes, cfg), keeps))
    stats = dict(student_success=torch.tensor([e.reward for e in episodes]).mean().item(),
                 groups=torch.cat(keeps).float().mean().item(), **loss_stats)
    if cfg.teacher == "ema":
        with torch.no_grad():
            for p_teacher, p in zip(teacher.parameters(), run.model.parameters()):
                p_teacher.lerp_(p, 1 - cfg.ema_decay)
    return stats


if __name__ == "__main__":
    cfg = agent.parse_args(OPSDConfig)
    run = agent.Run(cfg, f"OPSD (β={cfg.beta}, {cfg.teacher} teacher)")
    attach_teacher(run)
    run.train(train_step)
