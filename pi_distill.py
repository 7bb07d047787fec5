"""
pi_distill.py -- π-Distill (Penaloza et al. 2026, Algorithm 1): one model, two views, trained jointly.

The teacher π_T(o | s, I) sees the privileged information I (the frontier agent's actions) in its prompt;
the student π_S(o | s) is the same weights without it. Episodes are sampled from the teacher, and

    J(θ) = α · J_T + (1 − α) · J_S
    J_T  = E_{o~π_T}[R] − β · KL(π_T ‖ sg π_S)              the teacher does RL, kept close to the student
    J_S  = E_{o~π_T}[(π_S / sg π_T) · R] − c · KL(sg π_T ‖ π_S)   the student learns from the teacher's episodes

sg = stop-gradient. At test time only the student is used. The paper's equation has the student's forward KL
(c = β); its algorithm leaves it out, and so do the defaults here (c = --forward_kl_coef = 0).

The defaults are the paper's α = 0 (its best setting on τ-bench retail): only the student term is trained, on the
teacher's episodes, through the clipped ratio ρ_S = π_S / sg π_T, which weights each teacher token by how likely
the student is to write it itself, so a token only the PI explains (the frontier's shortcut user id) teaches
almost nothing. In this world a trained teacher (α = 0.5) pulled the views apart and the student learned more
slowly, and the forward KL, which is not weighted by ρ_S, made the student imitate the teacher's unreproducible
tokens until it wrote nonsense (docs/experiments.md).

    python pi_distill.py                          # the toy world, the defaults below
    python pi_distill.py --alpha=0.5 --pi_kind=names --out_dir=runs/names
"""
import math
import time
from dataclasses import dataclass

import torch

import agent
import config
import rl
from run import Run


@dataclass
class PiDistillConfig(config.Config):
    out_dir: str = "runs/pi_distill"
    lr_schedule: str = "cosine"  # at a constant lr the student wanders once it has learned (docs/experiments.md)
    alpha: float = config.knob(0.0, "weight α of the teacher term; 1 = teacher only, 0 = student only", "[0, 1]")
    alpha_anneal_rounds: int = config.knob(15, "α grows linearly from 0 over this many rounds (the paper)", ">= 0")
    beta: float = config.knob(0.25, "KL penalty β in the teacher's shaped reward R − β·KL_seq", ">= 0")
    kl_sum: bool = config.knob(False, "KL_seq summed over the episode's tokens instead of averaged")
    ratio_cap: float = config.knob(3.0, "dual-clip: bound on ρ_S where the advantage is negative", "> 1")
    forward_kl_coef: float = config.knob(0.0, "c, the coefficient of the student's KL(sg π_T ‖ π_S) on every "
                                         "episode the teacher wrote (the paper's equation: β; its algorithm: 0)", ">= 0")
    leak_penalty: float = config.knob(0.1, "reward − this per PI keyword the teacher writes (the paper: 0.1)", ">= 0")
    updates_per_round: int = config.knob(2, "gradient steps on each round of samples (the paper: 2-3)", ">= 1")
    drop_flat_rewards: bool = config.knob(False, "drop groups whose rewards are all equal before the KL shaping (the "
                                          "paper drops them on the shaped advantage)")
    student_trust_region: bool = config.knob(False, "clip the student term on π_S,θ / π_S,old with the importance "
                                             "weight min(π_S,old / π_T,old, ratio_cap), not on π_S / π_T (the paper)")

    def check(self):
        super().check()
        if self.teacher != "live" and self.alpha > 0:
            raise config.ConfigError(f"teacher={self.teacher!r} with alpha={self.alpha}: the teacher term trains the "
                                     "live PI view, so a frozen or EMA sampler needs alpha=0")


LEAK_WORDS = ("secret",)  # the PI block's delimiter word: naming it leaks the PI


def pi_distill_loss(logp_teacher, logp_teacher_old, logp_student, advantages, mask, alpha, eps=0.2,
                    ratio_cap=3.0, logp_student_old=None):
    """The π-Distill loss on per-token tensors [B, L] of log-probs of the sampled (teacher) tokens:

        L = α · L_T + (1 − α) · L_S,  each a sum over model tokens / N
        L_T = −Σ min(ρ_T A, clip(ρ_T, 1 − ε, 1 + ε) A),   ρ_T = π_T,θ(o_t) / π_T,old(o_t)   (behaviour policy)
        L_S = −Σ min(ρ_S A, clip(ρ_S, 1 − ε, 1 + ε) A),   ρ_S = π_S,θ(o_t) / sg π_T,θ(o_t)

    with the same episode advantage A [B] for every token, N = Σ mask. Where no clipping is active,
    ∇L_T = −(1/N) Σ A ∇log π_T (the policy gradient of E_{π_T}[A]) and ∇L_S = −(1/N) Σ ρ_S A ∇log π_S, which
    for one-token actions is exactly −∇E_{π_S}[A] (importance sampling); for longer actions the per-token
    ratio is the usual PPO-style approximation of the sequence ratio. ρ_S is unbounded above, so where A < 0
    its term is capped at ratio_cap·|A| (dual-clip); log-ratios are clamped before exp.
    The student's forward KL of the paper's equation is student_forward_kl, added beside this loss.
    logp_student_old (--student_trust_region): the student's log-probs at θ_old. L_S then clips the student against
    its old self, as PPO clips its sampling policy, and weights by the truncated importance ratio of the student to
    the sampling teacher:
        L_S = −Σ w · min(r A, clip(r, 1 − ε, 1 + ε) A),   r = π_S,θ(o_t) / π_S,old(o_t),
        w = min(sg π_S,old(o_t) / π_T,old(o_t), ratio_cap).
    The same gradient w·A·∇log π_S at θ = θ_old, but the paper's clip on ρ_S = π_S / π_T, a ratio of two
    different policies that sits outside [1 − ε, 1 + ε] wherever the views disagree, keeps only one sign of A
    there: tokens the student prefers to the teacher (ρ_S > 1 + ε) can only be pushed down, the others only up,
    whatever the reward says (test_all.py measures that drift).
    Returns (loss, stats)."""
    n = mask.sum().clamp(min=1)
    loss_T, rho_T, clip_T = rl.clipped_surrogate(logp_teacher, logp_teacher_old, advantages, eps)
    if logp_student_old is None:
        loss_S, rho_S, clip_S = rl.clipped_surrogate(logp_student, logp_teacher.detach(), advantages, eps, ratio_cap)
    else:
        surrogate, _, clip_S = rl.clipped_surrogate(logp_student, logp_student_old, advantages, eps)
        loss_S = torch.exp((logp_student_old - logp_teacher_old).clamp(max=math.log(ratio_cap))) * surrogate
        rho_S = torch.exp((logp_student - logp_teacher).detach().clamp(-20, 20))  # logged: the paper's ratio
    per_token = alpha * loss_T + (1 - alpha) * loss_S
    loss = (per_token * mask).sum() / n
    def mean(x):
        return ((x * mask).sum() / n).item()
    return loss, dict(loss=loss.item(), rho_T=mean(rho_T.detach()), rho_S=mean(rho_S.detach()),
                      clip_T=mean(clip_T), clip_S=mean(clip_S))


def student_forward_kl(kl_tokens, mask, n_tokens):
    """The student's forward KL of the paper's J_S, KL(sg π_T ‖ π_S) at each written position [B, L] (exact over the
    vocabulary), summed over the model's tokens / n_tokens. --forward_kl_coef = c adds (1 − α) · c times it to the
    loss, over every episode the teacher wrote: its gradient on the student's logits, (softmax(z_S) − softmax(z_T))
    / n_tokens, pulls π_S toward π_T whatever the reward, so it has a signal where the policy-gradient terms have
    none (a group of equal rewards; a token with ρ_S ≈ 0, whose L_S gradient ρ_S·A·∇log π_S vanishes)."""
    return (kl_tokens * mask).sum() / n_tokens


def leaks(episode):
    """How many PI keywords the episode's turns wrote."""
    return sum(text.count(word) for text, _ in episode.turns for word in LEAK_WORDS)


def annealed_alpha(cfg, round_index):
    """α in round round_index (from 0): it grows linearly from 0 over alpha_anneal_rounds rounds (the paper)."""
    return cfg.alpha * min(1.0, (round_index + 1) / cfg.alpha_anneal_rounds) if cfg.alpha_anneal_rounds else cfg.alpha


def kept_groups(rewards, advantages, cfg):
    """[B] bool: episodes whose group has a signal, judged on the shaped advantages, or with --drop_flat_rewards on
    the rewards before the KL shaping (a group of equal rewards would be kept on β·KL differences alone)."""
    return rl.groups_with_signal(rl.group_advantages(rewards, cfg.group_size) if cfg.drop_flat_rewards else advantages,
                                 cfg.group_size)


def train(cfg, run=None):
    """Algorithm 1, one round per loop iteration, its steps numbered as PAPER.md §4 numbers them. run: a Run whose
    model to start from (compare.py fine-tunes it first); by default the base."""
    run = run or Run(cfg, "π-Distill")
    run.start()  # the base's statistics and a round-0 evaluation (or, with --resume, the saved state)
    model, tok, temp = run.model, run.tok, cfg.temperature
    # the teacher π_T is this model's PI view (--teacher=live, the paper), or that of a copy of the base which
    # run.start() made and which stays frozen (--teacher=frozen) or follows the model (--teacher=ema, below)
    teacher = run.teacher
    # run.optimizer is AdamW(model.parameters(), weight_decay=0), made in Run.__init__ (run.py)
    while run.round < cfg.rounds:
        t0 = time.time()
        lr = run.set_lr()  # --lr, or with --lr_schedule=cosine (the default here) a cosine from --lr to --lr/10
        # 1. sample from the teacher view π_T(· | s, I), the PI block in its prompt: tasks_per_round train tasks,
        #    each group_size times in a row, so episodes [g·G, (g+1)·G) are task g's group
        tasks = run.sample_tasks()
        episodes = agent.rollout(teacher, tok, cfg, tasks, with_pi=True, generator=run.generator)
        R = torch.tensor([e.reward - cfg.leak_penalty * leaks(e) for e in episodes], device=run.device)
        batches = agent.micro_batches(episodes, cfg)  # whole groups; one batch, all episodes, unless --micro_batch
        masks, logps_teacher_old = [], []  # per batch, [B, L]: 1 on the tokens the model wrote; log π_T,old(o_t),
        for b in batches:                  # the log-probs the sampler recorded as it wrote them (θ_old)
            _, mask, logp_sampled = agent.batch_continuations(b, run.device)
            masks.append(mask)
            logps_teacher_old.append(logp_sampled)
        # 2. KL_seq: the exact KL(π_T ‖ π_S) over the vocabulary at each written position, at θ_old, averaged over
        #    the episode's tokens unless --kl_sum (a sum of a few nats would swamp a 0/1 reward); the student's
        #    log-probs at θ_old too (for --student_trust_region)
        kl, logps_student_old = [], []  # [B] and [B, L] per batch
        with torch.no_grad():
            for b, mask in zip(batches, masks):
                views = agent.two_view_scores(model, teacher, tok, b, temp, kl="T||S", chunk=cfg.logit_chunk,
                                              entropy=False)  # KL_seq and π_S,old only
                kl.append((views["kl"] * mask).sum(-1))
                logps_student_old.append(views["logp_S"])
        kl_seq = torch.cat(kl) if cfg.kl_sum else torch.cat(kl) / torch.cat(masks).sum(1).clamp(min=1)
        # 3. shaped reward R − β·KL_seq and group advantages A (reward minus its group's mean); groups with no
        #    signal (all A = 0) are dropped, or with --drop_flat_rewards those whose rewards are all equal
        A = rl.group_advantages(R - cfg.beta * kl_seq, cfg.group_size)
        kept = kept_groups(R, A, cfg)
        sizes = [len(b) for b in batches]
        A, keep = A.split(sizes), kept.split(sizes)  # per batch
        n_tokens = sum(mask[k].sum().item() for mask, k in zip(masks, keep))
        n_written = sum(mask.sum().item() for mask in masks)  # every episode's: the forward KL's normaliser
        alpha = annealed_alpha(cfg, run.round)
        # 4-6. loss α·L_T + (1 − α)·L_S over the kept episodes' tokens (+ (1 − α)·c·KL(sg π_T ‖ π_S) over every
        #      episode's, with --forward_kl_coef = c), backward, optimizer step; updates_per_round steps on the same
        #      samples (π_T,old stays the sampler's: ρ_T moves away from 1 after the first)
        steps = []  # each gradient step's statistics
        for _ in range(cfg.updates_per_round if kept.any() or cfg.forward_kl_coef else 0):
            run.optimizer.zero_grad(set_to_none=True)
            stats = {}
            for i, b in enumerate(batches):
                k, mask = keep[i], masks[i][keep[i]]
                if not k.any() and not cfg.forward_kl_coef:
                    continue
                # both views' log-probs of the sampled tokens (at α = 0, π_T enters only as sg π_T: no gradient)
                views = agent.two_view_scores(model, teacher, tok, b, temp, kl="T||S" if cfg.forward_kl_coef else None,
                                              chunk=cfg.logit_chunk, teacher_grad=alpha > 0)
                loss = torch.zeros((), device=run.device)
                if k.any():
                    logp_student_old = logps_student_old[i][k] if cfg.student_trust_region else None
                    policy_loss, batch_stats = pi_distill_loss(views["logp_T"][k], logps_teacher_old[i][k],
                                                               views["logp_S"][k], A[i][k], mask, alpha, cfg.clip_eps,
                                                               cfg.ratio_cap, logp_student_old)
                    batch_stats["entropy_S"] = rl.masked_mean(views["entropy_S"][k], mask)  # on π_T's tokens
                    weight = mask.sum().item() / n_tokens  # summed over micro-batches: the round's mean over tokens
                    loss = loss + weight * policy_loss
                    stats |= {key: stats.get(key, 0.0) + weight * value for key, value in batch_stats.items()}
                if cfg.forward_kl_coef:
                    forward_kl = student_forward_kl(views["kl"], masks[i], n_written)
                    loss = loss + (1 - alpha) * cfg.forward_kl_coef * forward_kl
                    stats["forward_kl"] = stats.get("forward_kl", 0.0) + forward_kl.item()
                run.check_finite(loss)
                loss.backward()
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()  # before clipping
            run.optimizer.step()
            steps.append(stats)
        if cfg.teacher == "ema":
            rl.ema_update(teacher, model, cfg.ema_decay)
        # log the round (the update statistics averaged over its gradient steps); every eval_every rounds
        # evaluate on held-out tasks and write ckpt.pt
        summary = dict(lr=lr, teacher_success=sum(e.reward for e in episodes) / len(episodes),
                       kl_seq=kl_seq.mean().item(), groups=kept.float().mean().item())
        if steps:
            summary |= dict(alpha=alpha, **{key: sum(s[key] for s in steps) / len(steps) for key in steps[0]})
        run.end_round(summary, time.time() - t0)
    return run.finish()


if __name__ == "__main__":
    train(config.parse_args(PiDistillConfig))
