"""
run.py -- what a training script keeps across rounds: the device, the model and its tokenizer, the optimizer, the
random generators, metrics.jsonl and config.json, a held-out evaluation every eval_every rounds (each also writes
ckpt.pt, so an interrupted run continues with --resume), and curves.png at the end. The algorithm's round itself
is written out in pi_distill.py and opsd.py; they call these functions.
"""
import copy
import dataclasses
import json
import math
import os
import random
import signal
import threading
import time

import torch

import agent
import base
from env_api import PI_KINDS, check_env

NEW_RUN = "start a new run in another --out_dir (or delete the file)"  # what to do with a checkpoint we refuse
RUN_FILES = ("metrics.jsonl", "config.json", "ckpt.pt")  # a folder holding any of these holds a run


def claim_out_dir(cfg, run_files=RUN_FILES):
    """A new run never replaces another: a used out_dir is refused, or with --overwrite moved aside to
    <out_dir>.old-N. An out_dir that cannot be written is refused before any work. --resume leaves the folder to
    its run."""
    held = [f for f in run_files if os.path.exists(os.path.join(cfg.out_dir, f))]
    if held and not cfg.resume:
        if not cfg.overwrite:
            raise SystemExit(f"--out_dir={cfg.out_dir} holds a run ({', '.join(held)}): continue it with --resume=True, "
                             "start this one in another --out_dir, or move the old one aside with --overwrite=True")
        folder = cfg.out_dir.rstrip(os.sep)
        aside = next(f"{folder}.old-{n}" for n in range(1, 10**6) if not os.path.exists(f"{folder}.old-{n}"))
        os.rename(cfg.out_dir, aside)
        print(f"--overwrite: moved the run that was in {cfg.out_dir} to {aside}")
    check_writable(cfg.out_dir)


def check_writable(folder):
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as err:
        raise SystemExit(f"--out_dir={folder}: cannot write there ({err.strerror})") from None


class Run:
    def __init__(self, cfg, name):
        self.cfg, self.name = cfg, name
        self.device = agent.pick_device(cfg.device)
        self.ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
        self.metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
        # an environment that cannot be built or misbehaves, or a checkpoint we refuse, stops the run here: before
        # a model loads (or a warm-up starts) and before any file is written
        check_env(agent.environments(cfg, "train", 1)[0], PI_KINDS if cfg.base_stats else (cfg.pi_kind,))
        self.checkpoint = self.read_checkpoint() if cfg.resume else None
        claim_out_dir(cfg)
        self.model, self.tok = base.load_base(cfg, self.device)
        if cfg.grad_checkpoint:  # keep each layer's input only; recompute the rest in the backward pass
            self.model.activation_checkpointing_enable()  # transformers 5's name for gradient_checkpointing_enable
            self.model.train()  # it acts in training mode only (no dropout in Qwen3 or Llama: nothing else changes)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.rng = random.Random(cfg.seed)                        # which training tasks
        self.generator = torch.Generator().manual_seed(cfg.seed)  # which tokens are sampled
        torch.manual_seed(cfg.seed)
        self.teacher = self.model  # the model whose PI view is the teacher; start() copies it unless --teacher=live
        self.extra = {}            # modules saved with the run besides the model (e.g. that copy)
        self.round, self.last_eval, self.default_sigint = 0, None, None
        self.saved_round = self.checkpoint["round"] if self.checkpoint else None  # the round ckpt.pt holds
        self.t0 = time.time()

    def start(self):
        """A new run: the base's statistics and a round-0 evaluation; or, with --resume, the checkpoint's state."""
        cfg = self.cfg
        print(f"{self.name}: config {json.dumps(dataclasses.asdict(cfg))}")
        if cfg.teacher != "live":  # a frozen or EMA teacher starts as a copy of this model; it is saved with the run
            self.teacher = self.extra["teacher"] = copy.deepcopy(self.model).requires_grad_(False)
        if cfg.resume:
            self.resume()
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:  # after a resume was accepted
            json.dump(dataclasses.asdict(cfg), f, indent=1)
        if not cfg.resume:
            open(self.metrics_path, "w").close()
            stats = agent.base_statistics(self.model, self.tok, cfg) if cfg.base_stats else None
            if stats:
                agent.print_base_statistics(stats, cfg)
            self.log(dict(round=0, eval=True, **self.evaluate()[0], base=stats))
        self.t0 = time.time()
        if threading.current_thread() is threading.main_thread() and self.default_sigint is None:
            self.default_sigint = signal.signal(signal.SIGINT, self.interrupted)  # Ctrl-C: one line, no traceback

    def interrupted(self, signum, frame):
        held = (f"{self.ckpt_path} holds round {self.saved_round}: continue with --resume=True"
                if self.saved_round is not None else "no checkpoint was written yet")
        raise SystemExit(f"stopped by Ctrl-C during round {self.round + 1}; {held}")

    def set_lr(self):
        """Sets and returns the learning rate of this round: --lr, or with --lr_schedule=cosine a cosine from --lr
        to --lr/10 over the run's rounds."""
        cfg, frac = self.cfg, min(1.0, self.round / max(1, self.cfg.rounds - 1))
        lr = cfg.lr if cfg.lr_schedule == "constant" else cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def sample_tasks(self):
        """tasks_per_round train tasks, each repeated group_size times (one group per task)."""
        seeds = [self.rng.randrange(agent.VAL_SEEDS) for _ in range(self.cfg.tasks_per_round)]
        return [("train", s) for s in seeds for _ in range(self.cfg.group_size)]

    def check_finite(self, loss):
        if not torch.isfinite(loss):
            kept = (f"{self.ckpt_path} holds round {self.saved_round}" if self.saved_round is not None else
                    "no checkpoint was written yet")
            raise FloatingPointError(f"loss is {loss.item()} in round {self.round + 1}; {kept} (checkpoints are "
                                     f"written at every evaluation, every --eval_every={self.cfg.eval_every} rounds)")

    def end_round(self, stats, seconds):
        """Log and print the round; every eval_every rounds (and at the last) evaluate and write ckpt.pt."""
        self.round += 1
        stats["time"] = seconds
        self.log(dict(round=self.round, **stats))
        print(f"round {self.round:4d} | " + " | ".join(f"{k} {v:#.3g}" for k, v in stats.items()), flush=True)
        if self.round % self.cfg.eval_every == 0 or self.round == self.cfg.rounds:
            self.last_eval = self.evaluate()
            self.print_eval(self.last_eval[0])
            self.log(dict(round=self.round, eval=True, **self.last_eval[0]))
            self.save()

    def finish(self):
        """Two episodes, the summary line and curves.png; returns the last evaluation."""
        cfg = self.cfg
        if self.default_sigint is not None:
            signal.signal(signal.SIGINT, self.default_sigint)
            self.default_sigint = None
        _, student, teacher = self.last_eval or self.evaluate()
        agent.show_episode(student["episodes"][0], "student (no PI)")
        agent.show_episode(teacher["episodes"][0], f"teacher (PI={cfg.pi_kind})")
        records = read_metrics(self.metrics_path)
        evals = [r for r in records if r.get("eval")]
        frontier = " (frontier agent 1.000)" if cfg.env == "toy" else ""  # the toy's scripted agent solves every task
        since = f" (from round {evals[0]['round']}, the first evaluation metrics.jsonl holds)" if evals[0]["round"] else ""
        print(f"summary: held-out student success {evals[0]['student']:.3f} -> {evals[-1]['student']:.3f}{since}"
              f"{frontier}, teacher {evals[0]['teacher']:.3f} -> {evals[-1]['teacher']:.3f}, "
              f"KL(T||S) {evals[0]['kl_token']:.3f} -> {evals[-1]['kl_token']:.3f}/token, "
              f"{time.time() - self.t0:.0f}s of training")
        plot_curves(records, os.path.join(cfg.out_dir, "curves.png"), self.name)
        return evals[-1]

    def evaluate(self):
        """Held-out success of the student (no PI) and of the teacher (PI = cfg.pi_kind), and KL(T ‖ S) per token
        on the teacher's episodes; where the teacher is not the trained model's PI view, that view's success too.
        val: the student's success on validation tasks (train-pool tasks never sampled in training), for choosing
        settings or checkpoints without looking at the held-out figures."""
        cfg = self.cfg
        s = agent.evaluate(self.model, self.tok, cfg, "student")
        t = agent.evaluate(self.teacher, self.tok, cfg, "teacher")
        record = dict(student=s["success"], **agent.prefixed("student", s),
                      val=agent.evaluate(self.model, self.tok, cfg, "student", split="val")["success"],
                      teacher=t["success"],
                      **agent.prefixed("teacher", t),
                      kl_token=agent.mean_kl(self.model, self.tok, t["episodes"][:200], cfg.temperature,
                                             self.teacher, cfg.logit_chunk)[1])
        if self.teacher is not self.model:
            record["pi_view"] = agent.evaluate(self.model, self.tok, cfg, "teacher")["success"]
        return record, s, t

    def print_eval(self, e):
        def extra(view):  # the environment's own statistics, if it has any
            found = [f"{k.removeprefix(view + '_')} {v:.2f}" for k, v in e.items() if k.startswith(view + "_")]
            return f" ({', '.join(found)})" if found else ""
        print(f"eval round {self.round:4d} | student {e['student']:.3f}{extra('student')} | val {e['val']:.3f} | "
              f"teacher {e['teacher']:.3f}{extra('teacher')} | KL(T||S) {e['kl_token']:.3f}/token"
              + (f" | trained model's PI view {e['pi_view']:.3f}" if "pi_view" in e else ""), flush=True)

    # --- files
    def log(self, record):
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self):
        state = dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                     config=dataclasses.asdict(self.cfg), config_class=type(self.cfg).__name__, round=self.round,
                     rng=self.rng.getstate(), generator=self.generator.get_state(), torch_rng=torch.get_rng_state(),
                     extra={k: m.state_dict() for k, m in self.extra.items()})
        torch.save(state, self.ckpt_path + ".tmp")
        os.replace(self.ckpt_path + ".tmp", self.ckpt_path)  # never leave a half-written checkpoint behind
        self.saved_round = self.round

    def read_checkpoint(self):
        """The checkpoint in out_dir, refused (the run's files untouched) unless this script and config made it."""
        if not os.path.exists(self.ckpt_path):
            raise SystemExit(f"--resume=True but there is no checkpoint at {self.ckpt_path}")
        state = base.load_file(self.ckpt_path, "checkpoint", ("model", "optimizer", "config", "config_class", "round",
                                                             "rng", "generator", "torch_rng", "extra"), NEW_RUN)
        refuse_another_run(self.ckpt_path, state["config_class"], state["config"], self.cfg)
        if state["round"] > self.cfg.rounds:
            raise SystemExit(f"{self.ckpt_path} holds round {state['round']}, past --rounds={self.cfg.rounds}: give "
                             f"--rounds={state['round']} or more to continue it")
        return state

    def resume(self):
        state = self.checkpoint
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            for k, m in self.extra.items():
                m.load_state_dict(state["extra"][k])
            self.rng.setstate(state["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise SystemExit(f"{self.ckpt_path}: does not fit this run ({type(err).__name__}: {err}); "
                             f"{NEW_RUN}") from None
        self.round = state["round"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        kept = [r for r in read_metrics(self.metrics_path) if r["round"] <= self.round]  # drop rounds after ckpt.pt
        with open(self.metrics_path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(self.metrics_path + ".tmp", self.metrics_path)  # a kill now leaves the old file or the new one
        if not any(r.get("eval") for r in kept):
            print(f"note: {self.metrics_path} holds no evaluation before round {self.round}: the summary starts there")
        print(f"resumed {self.ckpt_path} at round {self.round}")


def refuse_another_run(path, saved_class, saved, cfg):
    """Stops a resume whose saved run (its config class and config, from `path`) is another script's or was made
    with other settings; what only names the folder (the run is in it) or acts only at a start or end may differ."""
    if saved_class != type(cfg).__name__:
        raise SystemExit(f"{path} was made by another script's config ({saved_class}, not {type(cfg).__name__}): "
                         f"resume it with that script, or {NEW_RUN}")
    ours = dataclasses.asdict(cfg)
    defaults = dataclasses.asdict(type(cfg)())  # a run older than a flag was made with its default
    same_run = ("resume", "overwrite", "rounds", "out_dir", "base_stats")
    diff = [k for k in ours if k not in same_run and saved.get(k, defaults[k]) != ours[k]]
    if diff:
        raise SystemExit(f"{path} was made with another config: "
                         + ", ".join(f"{k}={saved.get(k)!r} (now {ours[k]!r})" for k in diff))


def read_metrics(path):
    """The records of a metrics.jsonl; a torn last line (a kill mid-write) is dropped, any other bad line named."""
    if not os.path.exists(path):
        return []
    lines = open(path).read().splitlines()
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise SystemExit(f"{path}: line {i + 1} is not JSON; fix or delete the file") from None
    return records


def plot_curves(records, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    evals = [r for r in records if r.get("eval")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in [("student", "student (no PI)"), ("teacher", "teacher (PI)"),
                       ("student_shortcut", "student, shortcut tasks")]:
        if key in evals[0]:
            ax1.plot([r["round"] for r in evals], [r[key] for r in evals], marker="o", label=label)
    ax1.set(xlabel="round", ylabel="held-out success", ylim=(0, 1), title=title)
    ax1.legend()
    ax2.plot([r["round"] for r in evals], [r["kl_token"] for r in evals], marker="o")
    ax2.set(xlabel="round", ylabel="KL(teacher || student) per token", title="teacher-student KL")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
