"""
probe.py -- what one round of each method can learn from, measured on a model (toy world): the reading in
docs/experiments.md of why π-Distill trails OPSD at horizon 1 and not at horizon 3.

    python probe.py                                            # the base, horizon 1
    python probe.py --horizon=3 --ckpt=results/horizon/<run>/ckpt.pt

It samples probe_tasks training tasks, group_size episodes each, from both views and prints two tables.

1. Per request kind, the groups whose rewards differ, for each sampler: the teacher view (π-Distill samples it)
   and the student view (RL and OPSD do). A group-relative advantage is zero in a group of equal rewards, so
   these groups are all a round's policy-gradient terms learn from; OPSD's KL term learns from every episode.
2. At each decision in the teacher's episodes -- the action after a request's order lookup: `cancel`, `return`
   or the status answer `respond` -- the teacher's probability π_T of the token it wrote, the student's π_S of
   the same token in the same state, and ρ_S = π_S / π_T. π-Distill's student term moves that token's logits
   by ρ_S·A·∇log π_S (∇ρ_S = ρ_S ∇log π_S): a decision the student gets wrong (small ρ_S) is learned slowly,
   and never where the teacher's group is all successes (A = 0). Beside it, what the student itself would write.
3. In the teacher's groups of equal rewards, what π-Distill's KL shaping favours. Such a group is kept on
   β·KL_seq differences alone (unless --drop_flat_rewards): its advantages are A = −β·(KL_seq − the group's
   mean), positive exactly on the episodes where the two views agree more than the group's average. Split by
   whether the episode writes the same tool twice in a row (a loop), the share of each with A > 0.
"""
import collections
import dataclasses
import random

import torch

import agent
import base
import config
import pi_distill
import rl
import toy_env
from run import NEW_RUN


@dataclasses.dataclass
class ProbeConfig(config.Config):
    ckpt: str = config.knob("", "a run's ckpt.pt to probe; empty: the base")
    probe_tasks: int = config.knob(64, "training tasks sampled, group_size episodes each, from each view", ">= 1")


def load(cfg):
    """The model to probe on CPU: the base, or the weights of a run's checkpoint (any script's: only the
    model is read)."""
    model, tok = base.load_base(cfg, torch.device("cpu"))
    if cfg.ckpt:
        state = base.load_file(cfg.ckpt, "checkpoint", ("model",), NEW_RUN)
        model.load_state_dict(state["model"])
        print(f"probed: {cfg.ckpt}")
    return model.eval(), tok


def tool_of(text):
    """The tool an action calls: its first word ("" for an empty action)."""
    return text.split()[0] if text.split() else ""


def decisions(episode, cfg):
    """(position, request kind) of each decision in an episode: the first token of the action that follows an
    order lookup (its write, or its answer for a status request)."""
    asks = toy_env.make_task(episode.seed, episode.split, cfg.shortcut_frac, cfg.horizon)["asks"]
    starts = [j for j, m in enumerate(episode.mask) if m and (j == 0 or not episode.mask[j - 1])]
    found, request, after_lookup = [], 0, False
    for j, (text, _) in zip(starts, episode.turns):
        tool = tool_of(text)
        if after_lookup and request < len(asks):
            found.append((j, asks[request]["kind"]))
        after_lookup = tool == "get_orders"
        request += tool == "respond"
    return found


def repeats_a_tool(episode):
    """Whether the episode writes the same tool twice in a row: a loop."""
    tools = [tool_of(text) for text, _ in episode.turns]
    return any(a == b for a, b in zip(tools, tools[1:]))


def probe(cfg):
    """Prints the three tables of the module docstring; returns them as dicts (the tests read them)."""
    model, tok = load(cfg)
    rng, G = random.Random(cfg.seed), cfg.group_size
    tasks = [("train", s) for s in [rng.randrange(agent.VAL_SEEDS) for _ in range(cfg.probe_tasks)] for _ in range(G)]
    signal = {}
    for view in ("teacher", "student"):
        episodes = agent.rollout(model, tok, cfg, tasks, view == "teacher", torch.Generator().manual_seed(cfg.seed))
        counts = collections.defaultdict(lambda: [0, 0, 0.0])  # kind -> [groups with a signal, groups, successes]
        for g in range(cfg.probe_tasks):
            group = episodes[g * G:(g + 1) * G]
            for kind in {a["kind"] for a in toy_env.make_task(group[0].seed, "train", cfg.shortcut_frac,
                                                              cfg.horizon)["asks"]} | {"all"}:
                counts[kind][0] += len({e.reward for e in group}) > 1
                counts[kind][1] += 1
                counts[kind][2] += sum(e.reward for e in group) / G
        signal[view] = dict(counts)
        if view == "teacher":
            teacher_episodes = episodes
    print(f"\nhorizon {cfg.horizon}, PI = {cfg.pi_kind}, {cfg.probe_tasks} tasks x {G} episodes per view: groups "
          "whose rewards differ (a task counts under each kind it asks for)")
    print(f"  {'kind':8s} {'teacher view':>22s} {'student view':>22s}")
    for kind in ("cancel", "return", "status", "all"):
        cells = [f"{c[0]}/{c[1]} (success {c[2] / max(c[1], 1):.2f})" if (c := signal[v].get(kind)) else "–"
                 for v in ("teacher", "student")]
        print(f"  {kind:8s} {cells[0]:>22s} {cells[1]:>22s}")

    with torch.no_grad():
        logits_S, logp_S = agent.score(model, tok, teacher_episodes, "student", cfg.temperature)
        logits_T, logp_T = agent.score(model, tok, teacher_episodes, "teacher", cfg.temperature)
    rows = collections.defaultdict(list)  # kind -> (teacher's token, π_T, π_S, student's top token)
    for b, e in enumerate(teacher_episodes):
        for j, kind in decisions(e, cfg):
            rows[kind].append((tok.decode([e.tokens[j]]).strip(), logp_T[b, j].exp().item(), logp_S[b, j].exp().item(),
                               tok.decode([logits_S[b, j].argmax().item()]).strip()))
    table = {}
    print("\nat the teacher's decisions (the action after a request's lookup), mean over them:")
    print(f"  {'kind':8s} {'n':>5s}  {'teacher writes':16s} {'π_T':>6s} {'π_S':>6s} {'ρ_S':>6s}  student's own top choice")
    for kind in ("cancel", "return", "status"):
        if not rows[kind]:
            continue
        n, r = len(rows[kind]), rows[kind]
        wrote, top = collections.Counter(x[0] for x in r), collections.Counter(x[3] for x in r)
        table[kind] = dict(n=n, pi_T=sum(x[1] for x in r) / n, pi_S=sum(x[2] for x in r) / n,
                           rho_S=sum(x[2] / x[1] for x in r) / n, student_top=dict(top))
        print(f"  {kind:8s} {n:5d}  {', '.join(f'{w} {c / n:.0%}' for w, c in wrote.most_common(2)):16s} "
              f"{table[kind]['pi_T']:6.3f} {table[kind]['pi_S']:6.3f} {table[kind]['rho_S']:6.3f}  "
              + ", ".join(f"{w} {c / n:.0%}" for w, c in top.most_common(2)))

    # KL_seq as π-Distill's step 2 computes it (the mean over the episode's written tokens), from the views' logits above
    mask = agent.batch_continuations(teacher_episodes, logits_T.device)[1]
    kl_seq = rl.kl_per_episode(logits_T, logits_S, mask) / mask.sum(1).clamp(min=1)
    # in a group of equal rewards A = −β·(KL_seq − its mean), a signal where it clears rl.groups_with_signal's margin
    beta = pi_distill.PiDistillConfig.beta
    favoured = (rl.group_advantages(-beta * kl_seq, G) > rl.SIGNAL_EPS).view(-1, G)
    kl_seq = kl_seq.view(-1, G)
    flat = {True: [], False: []}  # loops or not -> (A > 0, KL_seq) per episode of a group of equal rewards
    for g in range(cfg.probe_tasks):
        group = teacher_episodes[g * G:(g + 1) * G]
        if len({e.reward for e in group}) == 1:
            for e, a, k in zip(group, favoured[g].tolist(), kl_seq[g].tolist()):
                flat[repeats_a_tool(e)].append((a, k))
    shaping = {loops: dict(n=len(rows), favoured=sum(a for a, _ in rows) / len(rows),
                           kl_seq=sum(k for _, k in rows) / len(rows))
               for loops, rows in flat.items() if rows}
    print(f"\nin the teacher's groups of equal rewards ({sum(len(r) for r in flat.values()) // G} of {cfg.probe_tasks}), "
          f"what the KL shaping favours (A > 0 at β = {beta}: KL_seq below the group's mean):")
    for loops, row in shaping.items():
        print(f"  {'repeats a tool' if loops else 'no repeat':15s} {row['n']:5d} episodes  A > 0 in {row['favoured']:.0%}"
              f"  KL_seq {row['kl_seq']:.3f}")
    return signal, table, shaping


if __name__ == "__main__":
    probe(config.parse_args(ProbeConfig))
