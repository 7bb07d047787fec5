"""
opsd.py -- On-Policy Self-Distillation (Penaloza et al. 2026, Algorithm 2): RL on the student with a
reverse-KL penalty toward the same model conditioned on the privileged information.

    J_OPSD(θ) = E_{o~π_S}[R] − β · KL(π_S ‖ sg π_T)

Unlike π-Distill, the *student* samples (no PI in the prompt), the teacher only scores those tokens, the KL
is reverse (student ‖ teacher: mode-seeking, measured where the student goes), and only the student view is
trained: with --teacher=live (the paper) the teacher moves through the shared weights; with the default
--teacher=frozen it is the base model with the PI in its prompt. Why frozen: with a live shared-weight teacher
and a reward that is almost always 0, the cheapest way to lower KL(π_S ‖ π_T) is to make the two views
identical, i.e. to forget the PI (docs/experiments.md measures it).
Not to be confused with the reward-free self-distillation that Zhao et al. (2026) also call OPSD.
With β = 0 this is plain GRPO on the student: the paper's RL baseline.

    python opsd.py                 # the toy world, the defaults below
    python opsd.py --beta=0        # plain RL
    python opsd.py --teacher=live --out_dir=runs/collapse    # the paper's live teacher: collapses here (docs/experiments.md)
"""
import time
from dataclasses import dataclass

import torch

import agent
import config
import rl
from run import Run


@dataclass
class OPSDConfig(config.Config):
    out_dir: str = "runs/opsd"
    beta: float = config.knob(0.5, "weight β of the reverse KL toward the teacher; 0 = plain GRPO", ">= 0")
    teacher: str = "frozen"      # a live teacher collapses here (docs/experiments.md)
    kl_estimator: str = config.knob("analytic", "analytic (the paper's loss) | reward | token (see opsd_loss)",
                                   ("analytic", "reward", "token"))


def opsd_loss(logp_student, logp_student_old, advantages, mask, beta, eps=0.2, kl_tokens=None):
    """Clipped GRPO on student samples plus the analytic reverse KL, on per-token tensors [B, L]:

        L = −(1/N) Σ min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) + β (1/N) Σ_t KL(π_S,θ(·|s_t) ‖ sg π_T(·|s_t))
        ρ = π_S,θ(o_t) / π_S,old(o_t),  N = Σ mask

    kl_tokens [B, L] is that full-vocabulary KL at each sampled position, differentiable through the student
    (`rl.kl_per_position(logits_student, logits_teacher.detach())`); pass None for the reward-shaping forms,
    whose KL is already in the advantages [B] or [B, L]:
        reward:  A from R − β Σ_t sg(log π_S(o_t) − log π_T(o_t))   (episode reward; exact gradient of J_OPSD)
        token:   A_t = A − β sg(log π_S(o_t) − log π_T(o_t))         (per token, as on-policy distillation)
    Where clipping is inactive, E[∇L] = −(1/N)·∇E[R] + β/N · E[Σ_t ∇KL_t(s_t)] (analytic, token): the KL's
    gradient at the visited states, not how earlier tokens change which states are visited -- exact for
    one-token actions; the `reward` form also has that part and is exact for any length (see the tests).
    Never back-propagate the sampled log-ratio log π_S(o) − log π_T(o) itself: its expected gradient is zero.
    Returns (loss, stats)."""
    n = mask.sum().clamp(min=1)
    surrogate, rho, clipped = rl.clipped_surrogate(logp_student, logp_student_old, advantages, eps)
    per_token = surrogate + (beta * kl_tokens if kl_tokens is not None else 0)
    loss = (per_token * mask).sum() / n
    def mean(x):
        return ((x * mask).sum() / n).item()
    return loss, dict(loss=loss.item(), rho=mean(rho.detach()), clip=mean(clipped),
                      kl=mean(kl_tokens.detach()) if kl_tokens is not None else float("nan"))


def kept_groups(rewards, cfg):
    """[B] bool: plain GRPO (β = 0) drops groups whose rewards are all equal (no signal); with β > 0 the KL term has
    a gradient on every episode, so all are kept."""
    if cfg.beta == 0:
        return rl.groups_with_signal(rl.group_advantages(rewards, cfg.group_size), cfg.group_size)
    return torch.ones(len(rewards), dtype=torch.bool, device=rewards.device)


def train(cfg, run=None):
    """Algorithm 2, one round per loop iteration, in the paper's order (PAPER.md §5). run: a Run whose model to start
    from (compare.py fine-tunes it first); by default the base."""
    run = run or Run(cfg, f"OPSD (β={cfg.beta}, {cfg.teacher} teacher)")
    run.start()  # the base's statistics and a round-0 evaluation (or, with --resume, the saved state)
    model, tok, temp = run.model, run.tok, cfg.temperature
    # the teacher π_T is the PI view of a copy of the base which run.start() made: frozen (--teacher=frozen, the
    # default here: a live shared-weight teacher collapses in this world) or following the model (--teacher=ema,
    # below); or this model's own PI view (--teacher=live, the paper)
    teacher = run.teacher
    # run.optimizer is AdamW(model.parameters(), weight_decay=0), made in Run.__init__ (run.py)
    while run.round < cfg.rounds:
        t0 = time.time()
        lr = run.set_lr()  # --lr, or with --lr_schedule=cosine a cosine from --lr to --lr/10
        # 1. sample from the student view π_S(· | s), no PI in its prompt: tasks_per_round train tasks, each
        #    group_size times in a row, so episodes [g·G, (g+1)·G) are task g's group
        tasks = run.sample_tasks()
        episodes = agent.rollout(model, tok, cfg, tasks, with_pi=False, generator=run.generator)
        R = torch.tensor([e.reward for e in episodes], device=run.device)
        kept = kept_groups(R, cfg)
        batches = agent.micro_batches(episodes, cfg)  # whole groups; one batch, all episodes, unless --micro_batch
        masks, logps_student_old = [], []  # per batch, [B, L]: 1 on the tokens the model wrote; log π_S,old(o_t),
        for b in batches:                  # the log-probs the sampler (this model, θ_old) recorded as it wrote them
            _, mask, logp_sampled = agent.batch_continuations(b, run.device)
            masks.append(mask)
            logps_student_old.append(logp_sampled)
        sizes = [len(b) for b in batches]
        R, keep = R.split(sizes), kept.split(sizes)  # per batch
        n_tokens = sum(mask[k].sum().item() for mask, k in zip(masks, keep))
        # 2-5. per micro-batch: score both views, the KL, the advantages, the loss, backward; then one optimizer
        #      step. One step per round on fresh samples: ρ = π_S,θ / π_S,old is 1 at that step, so the clip
        #      rarely acts (it would on a second step on the same samples)
        run.optimizer.zero_grad(set_to_none=True)
        stats = {}
        for i, b in enumerate(batches):
            k, mask = keep[i], masks[i]
            if not k.any():
                continue
            # both views' log-probs of the student's tokens (sg π_T: the teacher view only scores them), and the
            # analytic KL(π_S ‖ sg π_T) at each position
            views = agent.two_view_scores(model, teacher, tok, b, temp, chunk=cfg.logit_chunk,
                                          kl="S||T" if cfg.kl_estimator == "analytic" else None)
            logp_student, logp_teacher = views["logp_S"], views["logp_T"]
            log_ratio = (logp_student.detach() - logp_teacher) * mask  # sampled log π_S − log π_T: a reward only
            shaped = R[i] - cfg.beta * log_ratio.sum(1) if cfg.kl_estimator == "reward" else R[i]
            A = rl.group_advantages(shaped, cfg.group_size)
            kl_tokens = views["kl"][k] if cfg.kl_estimator == "analytic" else None
            if cfg.kl_estimator == "token":
                A = A.unsqueeze(1) - cfg.beta * log_ratio
            loss, batch_stats = opsd_loss(logp_student[k], logps_student_old[i][k], A[k], mask[k], cfg.beta,
                                          cfg.clip_eps, kl_tokens)
            batch_stats["entropy_S"] = rl.masked_mean(views["entropy_S"][k], mask[k])  # the student's, on its tokens
            run.check_finite(loss)
            weight = mask[k].sum().item() / n_tokens  # summed over micro-batches: the round's mean over tokens
            (loss * weight).backward()
            stats = {key: stats.get(key, 0.0) + weight * value for key, value in batch_stats.items()}
        if stats:
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()  # before clipping
            run.optimizer.step()
        if cfg.teacher == "ema":
            rl.ema_update(teacher, model, cfg.ema_decay)
        # 6. log; every eval_every rounds evaluate on held-out tasks and write ckpt.pt
        run.end_round(dict(lr=lr, student_success=torch.cat(R).mean().item(), groups=kept.float().mean().item(),
                           **stats), time.time() - t0)
    return run.finish()


if __name__ == "__main__":
    train(config.parse_args(OPSDConfig))
