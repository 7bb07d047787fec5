"""
compare.py -- the paper's table in miniature (PAPER.md §6-§9): every method on one budget, over seeds.

    python compare.py --quick           # 1 seed, 100 rounds per method, 150 SFT steps
    python compare.py                   # 3 seeds, 400 rounds per method: a GPU, or a long CPU run
    python compare.py --horizons=1,2,3  # every method at each horizon: results/horizon.md
    python compare.py --seeds=1 --methods=opsd,pi_distill   # only those methods' runs (PI kinds, β); every
                                                            # finished run in the table

The budget is the number of sampled episodes: every method runs `rounds` rounds of tasks_per_round × group_size
episodes (25,600 at the defaults), one gradient step per round (two for π-Distill, its default). The SFT
baselines first train on sft_steps × sft_batch of the frontier agent's traces (demonstrations, not sampled
episodes), then do the same RL.
Every run is one process, cached in results/horizon/<hash of its config>/ (both modes: a run at horizon 1 is the
same run in either): rerunning the command redoes only what did not finish, and the tables hold every finished run.
Writes results/results.md, results/curves.png and results/kl_vs_success.png (at --horizon, with the PI kinds and β),
or with --horizons results/horizon.md, horizon.png and horizon_kinds.png.
"""
import copy
import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import redirect_stdout
from dataclasses import dataclass

import matplotlib
matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import torch

import agent
import base
import chat
import config
import opsd
import pi_distill
import run as runs
import toy_env
from env_api import PI_KINDS

ALGORITHMS = {"pi_distill": (pi_distill, pi_distill.PiDistillConfig), "opsd": (opsd, opsd.OPSDConfig)}
COT_TOKENS = 24  # a reasoning line and its action fit in one turn (the longest is 16 tokens; actions alone need 8)

# the table's methods: label -> (algorithm, config overrides, SFT stage before the RL: "", "actions" or "cot")
METHODS = {
    "RL": ("opsd", dict(beta=0.0), ""),
    "SFT w/o CoT + RL": ("opsd", dict(beta=0.0), "actions"),
    "SFT w/ CoT + RL": ("opsd", dict(beta=0.0, max_action_tokens=COT_TOKENS), "cot"),
    "OPSD": ("opsd", {}, ""),
    "π-Distill α=0": ("pi_distill", {}, ""),     # the default
    "π-Distill α=0.5": ("pi_distill", dict(alpha=0.5), ""),   # α annealed 0 → 0.5, as the paper does
    "π-Distill α=1": ("pi_distill", dict(alpha=1.0, alpha_anneal_rounds=0), ""),
}
METHOD_KEYS = {"rl": "RL", "sft": "SFT w/o CoT + RL", "sft_cot": "SFT w/ CoT + RL", "opsd": "OPSD",  # --methods
               "pi_distill": "π-Distill α=0", "pi_distill_0.5": "π-Distill α=0.5", "pi_distill_1": "π-Distill α=1"}
PI_METHODS = ["π-Distill α=0", "π-Distill α=0.5", "π-Distill α=1", "OPSD"]  # the ones that use the PI
BETAS = [0.0, 0.25, 0.5]  # the KL penalty in the shaped reward, swept for the default π-Distill (α = 0)


@dataclass
class CompareConfig(config.Config):
    out_dir: str = "results"
    quick: bool = config.knob(False, "caps seeds at 1, rounds at 100, SFT steps at 150")
    seeds: int = config.knob(3, "seeds per method", ">= 1")
    workers: int = config.knob(2, "runs in parallel, one process each (2 one-thread runs beat one two-thread run)",
                              ">= 1")
    sft_steps: int = config.knob(300, "SFT baselines: supervised steps on the frontier's traces", ">= 1")
    sft_batch: int = config.knob(32, "SFT baselines: traces per step", ">= 1")
    sft_lr: float = config.knob(1e-3, "SFT baselines: learning rate", "(0, 0.1]")
    sft_eval_every: int = config.knob(50, "SFT baselines: steps between validation evaluations", ">= 1")
    report: bool = config.knob(False, "write the tables from the runs finished so far, run nothing")
    horizons: str = config.knob("", "comma-separated toy-world horizons, e.g. 1,2,3: every method at each (no PI-kind "
                                "or β rows), each run kept in <out_dir>/horizon/; empty: the table at --horizon")
    methods: str = config.knob("all", "the methods to run, comma-separated keys of " + " ".join(METHOD_KEYS)
                               + " (e.g. opsd,pi_distill for more seeds of two, or their PI-kind and β runs); "
                               "the tables hold every finished run")

    def check(self):
        super().check()
        try:
            chosen = [int(h) for h in self.horizons.split(",")] if self.horizons else []
        except ValueError:
            raise config.ConfigError(f"horizons={self.horizons!r}: allowed comma-separated integers, e.g. 1,2,3")
        if any(not 1 <= h <= toy_env.MAX_HORIZON for h in chosen) or len(set(chosen)) < len(chosen):
            raise config.ConfigError(f"horizons={self.horizons!r}: allowed distinct horizons 1 to {toy_env.MAX_HORIZON}")
        if chosen and self.env != "toy":
            raise config.ConfigError(f"horizons={self.horizons!r}: a setting of the toy world, not --env={self.env}")
        unknown = [m for m in self.methods.split(",") if m not in METHOD_KEYS] if self.methods != "all" else []
        if unknown or not self.methods:
            raise config.ConfigError(f"methods={self.methods!r}: allowed all, or comma-separated keys of "
                                     + ", ".join(METHOD_KEYS))


# ----------------------------------------------------------------------------- the SFT baselines


def frontier_example(tok, env, seed, cot):
    """One of the frontier agent's (always successful) traces as a student-view training example:
    the actions only, or each preceded by its reasoning line (the student writes both)."""
    request, info = env.reset(seed)
    turns = []
    for reasoning, action in env.demonstration():
        obs = env.step(action)[0]
        turns.append((f"{reasoning}\n{action}" if cot else action, obs))
    turns[-1] = (turns[-1][0], None)  # the episode ends with the last action
    tokens, mask = chat.episode_tokens(tok, turns)
    prompt = tok.prompt(info["system"], request)
    return prompt + tokens, [0] * len(prompt) + mask


def sft(run, cot, cc):
    """Fine-tune the student on frontier traces of training tasks; keep the weights with the best student
    success on validation training tasks (as a user would: the test split is never looked at)."""
    rng, env = random.Random(run.cfg.seed), agent.make_env(run.cfg, "train")
    optimizer = torch.optim.AdamW(run.model.parameters(), lr=cc["sft_lr"], weight_decay=0.0)
    best = (-1.0, None, 0)
    for step in range(1, cc["sft_steps"] + 1):
        examples = [frontier_example(run.tok, env, rng.randrange(agent.VAL_SEEDS), cot) for _ in range(cc["sft_batch"])]
        loss = base.supervised_step(run.model, optimizer, examples, run.tok.pad, run.device)
        if step % cc["sft_eval_every"] == 0 or step == cc["sft_steps"]:
            val = agent.evaluate(run.model, run.tok, run.cfg, "student", n=min(200, run.cfg.eval_tasks), split="val")["success"]
            print(f"sft {step:4d} | loss {loss:.3f} | val student {val:.3f}", flush=True)
            if val > best[0]:
                best = (val, copy.deepcopy(run.model.state_dict()), step)
    run.model.load_state_dict(best[1])
    test = agent.evaluate(run.model, run.tok, run.cfg, "student")
    return dict(val=best[0], step=best[2], student=test["success"], **agent.prefixed("student", test))


# ----------------------------------------------------------------------------- one run, cached


SHARED_DEFAULTS = dataclasses.asdict(config.Config())


def job(cc, method, seed, algorithm, overrides, sft_kind):
    """A run is described by plain data; its hash names its folder, so a finished run is found again. A flag the
    user changed applies to every method; one left at its default keeps each algorithm's own default (π-Distill's
    cosine rate, OPSD's frozen teacher). In the toy world the trained student is also tested at every other horizon
    (out of domain), so a run is the same whichever mode made it."""
    config_class = ALGORITHMS[algorithm][1]
    changed = {k: v for k, v in cc.items() if k in SHARED_DEFAULTS and v != SHARED_DEFAULTS[k]}
    values = dataclasses.asdict(config_class(**changed | overrides | dict(seed=seed, base_stats=False)))
    defaults = dataclasses.asdict(config_class())
    # the run is named by what differs from the algorithm's defaults (a flag added later renames nothing);
    # execute sets out_dir and resume
    values = {k: v for k, v in values.items() if v != defaults[k] and k not in ("out_dir", "resume", "overwrite")}
    spec = dict(algorithm=algorithm, config=values,
                sft={k: cc[k] for k in ("sft_steps", "sft_batch", "sft_lr", "sft_eval_every")} | {"kind": sft_kind}
                if sft_kind else None)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    ood = [h for h in range(1, toy_env.MAX_HORIZON + 1) if h != cc["horizon"]] if cc["env"] == "toy" else []
    return dict(spec, method=method, seed=seed, dir=os.path.join(cc["out_dir"], "horizon", key), ood=ood)


def execute(job, threads):
    """Train one method with one seed in this process (its printed lines go to log.txt); returns its result.
    A run stopped half-way continues from its last ckpt.pt (after its SFT stage, whose result sft.json keeps).
    With job["ood"], the trained student is also evaluated at those horizons (out of domain)."""
    torch.set_num_threads(threads)
    module, config_class = ALGORITHMS[job["algorithm"]]
    sft_path = os.path.join(job["dir"], "sft.json")
    resume = os.path.exists(os.path.join(job["dir"], "ckpt.pt")) and (not job["sft"] or os.path.exists(sft_path))
    # a run stopped before its first checkpoint (or its SFT's end) left nothing to continue: start it again
    cfg = config_class(**job["config"], out_dir=job["dir"], resume=resume, overwrite=False)
    if not resume:
        for leftover in runs.RUN_FILES + ("sft.json",):
            if os.path.exists(os.path.join(job["dir"], leftover)):
                os.remove(os.path.join(job["dir"], leftover))
    os.makedirs(job["dir"], exist_ok=True)
    t0 = time.time()
    with open(os.path.join(job["dir"], "log.txt"), "a" if resume else "w") as log, redirect_stdout(log):
        run = runs.Run(cfg, job["method"])
        sft_result = None
        if job["sft"] and resume:
            sft_result = json.load(open(sft_path))
        elif job["sft"]:
            sft_result = sft(run, job["sft"]["kind"] == "cot", job["sft"])
            json.dump(sft_result, open(sft_path, "w"))
        final = module.train(cfg, run)
        ood = {str(h): agent.evaluate(run.model, run.tok, dataclasses.replace(cfg, horizon=h), "student")["success"]
               for h in job.get("ood", ())}  # keys as JSON has them, so a result read back is the same
    curve = [(r["round"] * cfg.tasks_per_round * cfg.group_size, r["student"])
             for r in map(json.loads, open(os.path.join(job["dir"], "metrics.jsonl"))) if r.get("eval")]
    result = dict(method=job["method"], seed=job["seed"], pi_kind=cfg.pi_kind, horizon=cfg.horizon, final=final,
                  curve=curve, sft=sft_result, ood=ood, seconds=time.time() - t0, resumed=resume)
    with open(os.path.join(job["dir"], "result.json"), "w") as f:
        json.dump(result, f)
    return result


def stale_settings(job):
    """{name: (then, now)} for each setting of the run in job's folder that is not the job's today (a default changed
    since it ran, which leaves the folder's name as it was); {} for a current run or an empty folder."""
    path = os.path.join(job["dir"], "config.json")
    if not os.path.exists(path):
        return {}
    then, now = json.load(open(path)), dataclasses.asdict(ALGORITHMS[job["algorithm"]][1](**job["config"]))
    return {k: (then[k], now[k]) for k in then.keys() & now.keys()
            if k not in ("out_dir", "resume", "overwrite") and then[k] != now[k]}


def cached(job):
    """The finished run's result, or None; a run made with other settings is not this job's."""
    path = os.path.join(job["dir"], "result.json")
    return json.load(open(path)) if os.path.exists(path) and not stale_settings(job) else None


def move_stale_run(job):
    """A run in job's folder made with other settings moves to <folder>.stale-N (kept: its figures may be cited), so
    the job runs anew in its folder instead of resuming or reusing it."""
    if stale := stale_settings(job):
        aside = next(f"{job['dir']}.stale-{n}" for n in range(1, 10**6) if not os.path.exists(f"{job['dir']}.stale-{n}"))
        os.rename(job["dir"], aside)
        print(f"{job['method']} seed {job['seed']}: the run in {job['dir']} was made with "
              + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in sorted(stale.items())) + f"; moved to {aside}",
              flush=True)


# ----------------------------------------------------------------------------- the report


def write_page(cc, name, lines):
    text = "\n".join(lines)
    with open(os.path.join(cc["out_dir"], name), "w") as f:
        f.write(text)
    return text


def mean_std(values, percent=False):
    """Mean ± std over seeds ("–" for none); with percent, in % and followed by the number of seeds."""
    values = [100 * v if percent else v for v in values if v is not None]
    if not values:
        return "–"
    digits = ".1f" if percent else ".3f"
    text = f"{np.mean(values):{digits}} ± {np.std(values):{digits}}" if len(values) > 1 else f"{values[0]:{digits}}"
    return text + (f" (n={len(values)})" if percent else "")


def write_report(cc, command, premise, results, hardware):
    by = {}
    for r in results:
        by.setdefault((r["method"], r["pi_kind"], r.get("beta")), []).append(r)
    def final(method, key, kind="calls", beta=None):  # success in %, with the number of seeds
        return mean_std([r["final"].get(key) for r in by.get((method, kind, beta), [])], percent=key != "kl_token")
    lines = [
        f"# The paper's table on the toy world, horizon {cc['horizon']}" if cc["env"] == "toy" else
        f"# The paper's table on {cc['env']}",
        "",
        f"`{command}`: {cc['rounds']} rounds × "
        f"{cc['tasks_per_round']} tasks × {cc['group_size']} episodes = {cc['rounds'] * cc['tasks_per_round'] * cc['group_size']:,} "
        f"sampled episodes per method (one gradient step per round, two for π-Distill); "
        f"SFT first trains {cc['sft_steps']} steps × "
        f"{cc['sft_batch']} frontier traces. Held-out student success (no PI) on {cc['eval_tasks']} test tasks, "
        f"sampled at temperature {cc['temperature']}, %, mean ± std over the finished seeds (n). {hardware}, {cc['workers']} runs at a time; "
        f"the runs took {sum(r['seconds'] for r in results) / 60:.0f} min in all.",
        "",
        "| method | student | shortcut tasks | other tasks | teacher (PI=calls) |",
        "|---|---|---|---|---|",
        "| frontier agent (reference) | 100.0 | 100.0 | 100.0 | |",
        f"| base | " + " | ".join(f"{100 * premise[k]:.1f}" if k in premise else "–"  # a user's environment has no
                                 for k in ("student", "student_shortcut", "student_normal"))  # toy statistics
        + f" | {100 * premise['calls']['teacher']:.1f} |",
    ]
    for label in ("SFT w/o CoT", "SFT w/ CoT"):  # the SFT checkpoints the "+ RL" runs started from
        runs = [r for r in results if r["method"] == label + " + RL"]
        lines.append(f"| {label} (checkpoint by validation) | " + " | ".join(
            mean_std([r["sft"].get(k) for r in runs], True) for k in ("student", "student_shortcut", "student_normal"))
            + " | |")
    for method in METHODS:
        lines.append(f"| {method} | " + " | ".join(
            final(method, k) for k in ("student", "student_shortcut", "student_normal", "teacher")) + " |")
    lines += ["", "## PI kinds: initial teacher–student KL and PI utility Δ against final student success (PAPER.md §7)",
              "", "| PI kind | base teacher | Δ | KL(T‖S) per token | per episode | "
              + " | ".join(PI_METHODS) + " |", "|---|---|---|---|---|" + "---|" * len(PI_METHODS)]
    for kind in PI_KINDS:
        s = premise[kind]
        lines.append(f"| {kind} | {100 * s['teacher']:.1f} | {100 * s['delta']:+.1f} | {s['kl_token']:.3f} | "
                     f"{s['kl_episode']:.2f} | " + " | ".join(final(m, "student", kind) for m in PI_METHODS) + " |")
    lines += ["", "## β, the KL penalty in the shaped reward (π-Distill α = 0, PI = calls)", "",
              "| β | student | teacher | KL(T‖S) per token at the end |", "|---|---|---|---|"]
    for beta in BETAS:
        tag = None if beta == pi_distill.PiDistillConfig.beta else beta
        lines.append(f"| {beta} | " + " | ".join(final("π-Distill α=0", k, beta=tag)
                                                 for k in ("student", "teacher", "kl_token")) + " |")
    lines += ["", "![curves](curves.png)", "", "![initial KL against final success](kl_vs_success.png)", ""]
    return write_page(cc, "results.md", lines)


def plot(cc, premise, results):
    fig, ax = plt.subplots(figsize=(8, 5))
    for method in METHODS:
        curves = [r["curve"] for r in results if r["method"] == method and r["pi_kind"] == "calls" and "beta" not in r]
        if curves:
            x = [e for e, _ in curves[0]]
            y = np.array([[s for _, s in c] for c in curves])
            ax.plot(x, y.mean(0), marker="o", label=method)
            ax.fill_between(x, y.min(0), y.max(0), alpha=0.2)
    ax.set(xlabel="episodes sampled", ylabel="held-out student success (no PI)", ylim=(0, None),
           title="mean, band = min..max over the finished seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(cc["out_dir"], "curves.png"), dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, marker in zip(PI_METHODS, "os^D"):
        points = [(premise[r["pi_kind"]]["kl_token"], r["final"]["student"]) for r in results
                  if r["method"] == method and "beta" not in r]
        if points:
            ax.scatter(*zip(*points), marker=marker, label=method)
    for kind in PI_KINDS:
        ax.annotate(kind, (premise[kind]["kl_token"], 0), textcoords="offset points", xytext=(0, 4), ha="center")
    ax.set(xlabel="initial KL(teacher || student) per token", ylabel="final held-out student success",
           ylim=(0, None), title="initial KL against transfer, one point per run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(cc["out_dir"], "kl_vs_success.png"), dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- running them


def premise_path(cfg):
    """Where the base's premise at cfg's setting is kept, beside the runs: one file per horizon of the toy world, which
    both modes share; another environment's in base.json (measured_premise measures again when its key changes)."""
    return os.path.join(cfg.out_dir, "horizon", f"base_h{cfg.horizon}.json" if cfg.env == "toy" else "base.json")


def measured_premise(cfg, path):
    """The base's premise (agent.base_statistics) at cfg's setting, measured once and kept in `path`."""
    key = dict(model=cfg.model or base.base_cache_path(cfg), tasks=cfg.eval_tasks,  # and what shapes an episode:
               **{k: getattr(cfg, k) for k in ("env", "horizon", "temperature", "max_turns", "max_action_tokens",
                                               "shortcut_frac")})
    saved = json.load(open(path)) if os.path.exists(path) else {}
    if saved.get("key") == key:  # measured before on this very base model
        return saved["stats"]
    model, tok = base.load_base(cfg, agent.pick_device(cfg.device))
    stats = agent.base_statistics(model, tok, cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    json.dump(dict(key=key, stats=stats), open(path, "w"))
    return stats


def run_jobs(cfg, jobs, priority):
    """Runs the jobs not finished yet, cfg.workers at a time, started in the order of priority(job); a line as each
    finishes."""
    finished = [cached(j) for j in jobs]
    todo = sorted((j for j, r in zip(jobs, finished) if r is None), key=priority)
    for j in todo:
        move_stale_run(j)
    print(f"{len(jobs)} runs: {len(jobs) - len(todo)} cached, {len(todo)} to do, {cfg.workers} at a time; logs in "
          f"{os.path.dirname(jobs[0]['dir'])}/*/log.txt", flush=True)
    done, t0, ran = set(), time.time(), []
    def report(j, r, note=""):
        done.add(j["dir"])
        left = len(jobs) - len(done)
        if not note:
            ran.append(r["seconds"])
        eta = f", ~{sum(ran) / len(ran) * left / min(cfg.workers, max(1, left)) / 3600:.1f} h left" if ran and left else ""
        print(f"[{len(done)}/{len(jobs)}] {j['method']:18s} PI={r['pi_kind']:5s} horizon {r.get('horizon', 1)} "
              f"seed {j['seed']}" + (f" β={j['beta']}" if "beta" in j else "")
              + f" | student {r['final']['student']:.3f} teacher {r['final']['teacher']:.3f} | {r['seconds']:.0f}s"
              + note + f" | {left} runs left{eta} | {time.time() - t0:.0f}s", flush=True)
    for j, r in zip(jobs, finished):
        if r is not None:
            report(j, r, " (cached)")
    threads = max(1, torch.get_num_threads() // cfg.workers)
    if cfg.workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(execute, j, threads): j for j in todo}
            for f in as_completed(futures):  # a line as each run finishes
                report(futures[f], f.result())
    else:
        for j in todo:
            report(j, execute(j, threads))


def run_chosen(cfg, jobs, priority):
    """Runs the jobs of the methods chosen by --methods (none with --report: a sweep running, or stopped); returns
    every finished job and its result, in the jobs' order: the tables hold them all."""
    if not cfg.report:
        chosen = set(METHODS) if cfg.methods == "all" else {METHOD_KEYS[m] for m in cfg.methods.split(",")}
        run_jobs(cfg, [j for j in jobs if j["method"] in chosen], priority)
    finished = [(j, r | ({"beta": j["beta"]} if "beta" in j else {})) for j in jobs if (r := cached(j)) is not None]
    print(f"{len(finished)} of {len(jobs)} runs finished")
    return [j for j, _ in finished], [r for _, r in finished]


def hardware(cfg):
    device = agent.pick_device(cfg.device)
    return {"cuda": lambda: torch.cuda.get_device_name(device), "mps": lambda: f"Apple GPU (MPS), {platform.machine()}"
            }.get(device.type, lambda: f"{platform.machine()} CPU, {os.cpu_count()} cores")()


# ----------------------------------------------------------------------------- the horizon sweep

def horizon_jobs(cfg):
    """Every method at each of --horizons, seed by seed."""
    cc = dataclasses.asdict(cfg)
    return [job(cc | dict(horizon=h), m, seed, a, o, s) for seed in range(cfg.seed, cfg.seed + cfg.seeds)
            for h in map(int, cfg.horizons.split(",")) for m, (a, o, s) in METHODS.items()]


def horizon_sweep(cfg, command):
    """Every method at each of --horizons on one episode budget; each trained student is also evaluated at the
    other horizons (out of domain). Seed by seed, the shortest and the longest horizon run first, then the others."""
    cc = dataclasses.asdict(cfg)
    horizons = [int(h) for h in cfg.horizons.split(",")]
    premise = {}
    for h in horizons:
        at_h = dataclasses.replace(cfg, horizon=h)
        premise[h] = measured_premise(at_h, premise_path(at_h))
        agent.print_base_statistics(premise[h], at_h)
    jobs = horizon_jobs(cfg)
    ends = (min(horizons), max(horizons))
    # seed by seed, the ends first, the shorter first; at each horizon the SFT w/ CoT run last, the other SFT first
    def priority(j):
        h = j["config"].get("horizon", 1)  # a job's config holds only what differs from the defaults
        return j["seed"], h not in ends, h, j["method"] == "SFT w/ CoT + RL", j["sft"] is None
    jobs, results = run_chosen(cfg, jobs, priority)
    print(write_horizon_report(cc, command, premise, results, hardware(cfg)))
    plot_horizons(cc, premise, results)
    plot_kind_curves(cc, premise, jobs)


def write_horizon_report(cc, command, premise, results, hardware):
    by = {}
    for r in results:
        by.setdefault((r["method"], r["horizon"]), []).append(r)
    budget = cc["rounds"] * cc["tasks_per_round"] * cc["group_size"]
    lines = ["# Where privileged information pays: the toy world across horizons", "",
             f"`{command}`: {cc['rounds']} rounds × {cc['tasks_per_round']} tasks × {cc['group_size']} episodes = "
             f"{budget:,} sampled episodes per run; SFT first trains {cc['sft_steps']} steps × {cc['sft_batch']} "
             f"frontier traces. Horizon h: the customer makes h requests in turn (a solution takes up to 3h + 1 "
             f"calls). Held-out student success (no PI), %, on {cc['eval_tasks']} test tasks at temperature {cc['temperature']}; mean ± "
             f"std over seeds (n). {hardware}, {cc['workers']} runs at a time; the runs took "
             f"{sum(r['seconds'] for r in results) / 3600:.1f} h in all (a resumed run counts from its resumption).",
             "", "## The premise, per horizon (the one base)", "",
             "| horizon | student | teacher, PI = calls | names | hint | KL(T‖S) per token: calls | names | hint |",
             "|---|---|---|---|---|---|---|---|"]
    for h, p in premise.items():
        lines.append(f"| {h} | {100 * p['student']:.1f} | " + " | ".join(f"{100 * p[k]['teacher']:.1f}" for k in PI_KINDS)
                     + " | " + " | ".join(f"{p[k]['kl_token']:.3f}" for k in PI_KINDS) + " |")
    lines += ["", "## Held-out student success (%)", "", "| method | " + " | ".join(f"horizon {h}" for h in premise)
              + " |", "|---|" + "---|" * len(premise),
              "| base | " + " | ".join(f"{100 * p['student']:.1f}" for p in premise.values()) + " |"]
    for method in METHODS:
        lines.append(f"| {method} | " + " | ".join(
            mean_std([r["final"]["student"] for r in by.get((method, h), [])], percent=True) for h in premise) + " |")
    def kinds(runs_here, view="student"):  # the share of requests of each kind solved, mean over seeds
        if not runs_here:
            return "–"
        return " / ".join(f"{100 * np.nanmean([r['final'].get(f'{view}_{k}', np.nan) for r in runs_here]):.0f}"
                          for k in toy_env.REQUESTS)
    lines += ["", f"## What each method learns: requests solved when answered, {' / '.join(toy_env.REQUESTS)} (%)", "",
              "| method | " + " | ".join(f"horizon {h}" for h in premise) + " |", "|---|" + "---|" * len(premise)]
    for method in METHODS:
        lines.append(f"| {method} | " + " | ".join(kinds(by.get((method, h), [])) for h in premise) + " |")
    lines += ["", "## Every run, seed by seed: held-out student success, % (cancel / return / status solved)", "",
              "| method | seed | " + " | ".join(f"horizon {h}" for h in premise) + " |", "|---|---|" + "---|" * len(premise)]
    for method in METHODS:  # the means above hide a seed that never learns a kind; this shows it
        for seed in sorted({r["seed"] for h in premise for r in by.get((method, h), [])}):
            cells = [[r for r in by.get((method, h), []) if r["seed"] == seed] for h in premise]
            lines.append(f"| {method} | {seed} | " + " | ".join(
                f"{100 * here[0]['final']['student']:.1f} ({kinds(here)})" if here else "–" for here in cells) + " |")
    lines += ["", "## The teacher (PI = calls) at the end, held out (%); its requests per kind", "",
              "| method | " + " | ".join(f"horizon {h}" for h in premise) + " |", "|---|" + "---|" * len(premise)]
    for method in PI_METHODS:
        lines.append(f"| {method} | " + " | ".join(
            f"{mean_std([r['final']['teacher'] for r in by.get((method, h), [])], percent=True)} "
            f"({kinds(by.get((method, h), []), 'teacher')})" for h in premise) + " |")
    lines += ["", "## Out of domain: trained at one horizon, the student tested at the others (%)", "",
              "| method | trained at | " + " | ".join(f"tested at {h}" for h in premise) + " |",
              "|---|---|" + "---|" * len(premise)]
    lines += [f"| base | – | " + " | ".join(f"{100 * p['student']:.1f}" for p in premise.values()) + " |"]
    for method in METHODS:
        for h in premise:
            runs_here = by.get((method, h), [])
            if runs_here:
                lines.append(f"| {method} | {h} | " + " | ".join(
                    mean_std([r["final"]["student"] if x == h else r["ood"][str(x)] for r in runs_here], True)
                    for x in premise) + " |")
    lines += ["", "![held-out student success against horizon](horizon.png)", "",
              "![requests of each kind solved, held out, over training](horizon_kinds.png)", ""]
    return write_page(cc, "horizon.md", lines)


def plot_horizons(cc, premise, results):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(list(premise), [100 * p["student"] for p in premise.values()], "k--", marker="x", label="base")
    for method in METHODS:
        points = [(h, [100 * r["final"]["student"] for r in results if r["method"] == method and r["horizon"] == h])
                  for h in premise]
        points = [(h, v) for h, v in points if v]
        if points:
            ax.errorbar([h + 0.03 * (list(METHODS).index(method) - 3) for h, _ in points],
                        [np.mean(v) for _, v in points], yerr=[np.std(v) for _, v in points], marker="o", capsize=3,
                        label=method)
    ax.set(xlabel="horizon (requests per episode)", ylabel="held-out student success (%)", xticks=list(premise),
           ylim=(0, None), title=f"{cc['rounds'] * cc['tasks_per_round'] * cc['group_size']:,} episodes per run; "
                                 "mean ± std over the finished seeds (n: results/horizon.md)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(cc["out_dir"], "horizon.png"), dpi=100)
    plt.close(fig)


def plot_kind_curves(cc, horizons, jobs):
    """horizon_kinds.png: held-out learning curves per request kind (a row per horizon, a column per kind), one line
    per method, the mean over its finished seeds: which kinds each method learns, when, and which never."""
    kinds = list(toy_env.REQUESTS)
    horizons = [h for h in horizons if any(j["config"].get("horizon", 1) == h for j in jobs)]  # those with runs
    fig, axes = plt.subplots(len(horizons), len(kinds), figsize=(4 * len(kinds), 2.8 * len(horizons)), squeeze=False,
                             sharex=True, sharey=True)
    for row, h in zip(axes, horizons):
        for method in METHODS:
            evals = [[r for r in runs.read_metrics(os.path.join(j["dir"], "metrics.jsonl")) if r.get("eval")]
                     for j in jobs if j["method"] == method and j["config"].get("horizon", 1) == h]
            if not evals:
                continue
            rounds = [r["round"] for r in evals[0]]
            for ax, kind in zip(row, kinds):
                ax.plot(rounds, [100 * np.nanmean([e[i].get(f"student_{kind}", np.nan) for e in evals if i < len(e)])
                                 for i in range(len(rounds))], label=method, color=f"C{list(METHODS).index(method)}")
        for ax, kind in zip(row, kinds):
            ax.set_title(f"horizon {h}: {kind} requests solved (%)", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("round")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(cc["out_dir"], "horizon_kinds.png"), dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    cfg = config.parse_args(CompareConfig, argv)
    if cfg.quick:
        cfg.seeds, cfg.rounds, cfg.sft_steps = min(cfg.seeds, 1), min(cfg.rounds, 100), min(cfg.sft_steps, 150)
        print(f"--quick: {cfg.seeds} seed, {cfg.rounds} rounds per method, {cfg.sft_steps} SFT steps "
              "(the full run: 3 seeds, 400 rounds, 300 SFT steps)")
    command = " ".join(["python compare.py", *(sys.argv[1:] if argv is None else argv)])
    runs.check_writable(cfg.out_dir)  # before any work: the premise alone takes minutes
    if cfg.horizons:
        return horizon_sweep(cfg, command)
    cc = dataclasses.asdict(cfg)
    t0 = time.time()
    jobs = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        jobs += [job(cc, m, seed, a, o, s) for m, (a, o, s) in METHODS.items()]
        for kind in PI_KINDS[1:]:
            jobs += [job(cc, m, seed, METHODS[m][0], METHODS[m][1] | dict(pi_kind=kind), "") for m in PI_METHODS]
        for beta in BETAS:
            if beta != pi_distill.PiDistillConfig.beta:
                jobs.append(job(cc, "π-Distill α=0", seed, "pi_distill", dict(beta=beta), "") | dict(beta=beta))
    premise = measured_premise(cfg, premise_path(cfg))
    agent.print_base_statistics(premise, cfg)
    _, results = run_chosen(cfg, jobs, lambda j: j["sft"] is None)  # SFT runs are the longest: start them first
    plot(cc, premise, results)
    print(write_report(cc, command, premise, results, hardware(cfg)))
    print(f"wrote {cfg.out_dir}/results.md, curves.png, kl_vs_success.png in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
