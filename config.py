"""
config.py -- every setting with its default, what values it may take and what it does; `--key=value` parsing.

    python pi_distill.py --help        # every key of that script, its default, its range and its description

A script's config is a dataclass derived from Config; a field is declared with knob(default, help, allowed).
Values are checked when the config is built, from the command line or in Python (compare.py, a notebook), so
a typo or an out-of-range value stops the run at once, naming the key.
"""
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass

import toy_env
from env_api import PI_KINDS


def knob(default, help, allowed=None):
    """A config field: its default, a one-line description (--help prints it) and what values it may take:
    an interval "[0, 1]" / "(0, 0.01]", a bound ">= 1" / "> 0", or a tuple of choices. Checked by Config.check."""
    return dataclasses.field(default=default, metadata=dict(help=help, allowed=allowed))


def allows(allowed, value):
    if allowed is None:
        return True
    if isinstance(allowed, tuple):
        return value in allowed
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if allowed.startswith((">=", ">")):
        bound = float(allowed.lstrip(">= "))
        return value >= bound if allowed.startswith(">=") else value > bound
    low, high = (float(x) for x in allowed[1:-1].split(","))
    return ((low <= value) if allowed[0] == "[" else (low < value)) and ((value <= high) if allowed[-1] == "]"
                                                                          else (value < high))


def article(kind):
    """'an int', 'a float': the type named as a sentence names it."""
    return f"{'an' if kind.__name__[0] in 'aeiou' else 'a'} {kind.__name__}"


def describe(allowed):
    return " | ".join(allowed) if isinstance(allowed, tuple) else allowed


class ConfigError(ValueError):
    """A config value that is not allowed; parse_args turns it into one line and exit code 1."""


@dataclass
class Config:
    seed: int = knob(0, "seeds the training tasks, the sampled tokens and torch", "[0, 4294967295]")
    out_dir: str = knob("runs/agent", "where metrics.jsonl, config.json, curves.png and ckpt.pt are written")
    device: str = knob("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")
    resume: bool = knob(False, "continue the run saved in out_dir/ckpt.pt")
    overwrite: bool = knob(False, "a run already in out_dir is moved aside to <out_dir>.old-N (else it is refused)")
    model: str = knob("", "empty: the tiny model below, warmed up here; or a Hugging Face name or local folder")
    n_layer: int = knob(4, "tiny model: layers", ">= 1")
    n_embd: int = knob(128, "tiny model: width (a multiple of n_head)", ">= 2")
    n_head: int = knob(8, "tiny model: attention heads", ">= 1")
    env: str = knob("toy", "toy (toy_env.py) | gem:<GEM env id> (gem_env.py) | module:factory (yours; docs/environments.md)")
    max_turns: int = knob(6, "an episode is cut after this many model turns, in every environment (the toy world: at "
                          "horizon 1, three more per further request)", ">= 1")
    horizon: int = knob(1, "toy world: how many requests the customer makes in turn, each with its own lookup, write "
                        "and answer", f"[1, {toy_env.MAX_HORIZON}]")
    shortcut_frac: float = knob(0.3, "toy world: fraction of tasks where the frontier skips the user lookup", "[0, 1]")
    max_action_tokens: int = knob(8, "a model turn longer than this many tokens is cut", ">= 1")
    # the base warm-up (stand-in for pretraining), cached in cache_dir keyed by these fields
    warmup_steps: int = knob(6000, "warm-up: supervised steps on the behaviour policy's episodes", ">= 1")
    warmup_batch: int = knob(32, "warm-up: episodes per step", ">= 1")
    warmup_lr: float = knob(3e-3, "warm-up: peak learning rate", "(0, 0.1]")
    warmup_skill: float = knob(0.1, "warm-up: behaviour policy's probability of the right decision (docs/base_model.md)", "[0, 1]")
    warmup_pi_frac: float = knob(0.75, "warm-up: fraction of episodes shown with a PI block", "[0, 1]")
    warmup_eval_every: int = knob(250, "warm-up: steps between validation evaluations", ">= 1")
    warmup_seed: int = knob(2, "warm-up: seeds the model's initialisation and the behaviour episodes", ">= 0")
    cache_dir: str = knob("", "where the warmed-up base is cached; empty: cache/ beside base.py")
    # training
    rounds: int = knob(400, "training rounds (each samples tasks_per_round x group_size episodes)", ">= 0")
    lr: float = knob(3e-4, "AdamW learning rate", "(0, 0.01]")
    lr_schedule: str = knob("constant", "constant | cosine (from --lr down to a tenth of it at the last round)",
                            ("constant", "cosine"))
    tasks_per_round: int = knob(8, "tasks per round", ">= 1")
    group_size: int = knob(8, "episodes per task (a group: advantages are relative to its mean)", ">= 2")
    temperature: float = knob(0.75, "sampling temperature (the paper's); the policy is softmax(logits / T)", "(0, 10]")
    clip_eps: float = knob(0.2, "PPO clip range ε of the importance ratios", "(0, 1)")
    pi_kind: str = knob("calls", "the privileged information: calls | names | hint", PI_KINDS)
    teacher: str = knob("live", "the teacher view's weights: live (the trained model, the paper) | frozen (a copy of "
                        "the starting model) | ema (a copy that follows it)", ("live", "frozen", "ema"))
    ema_decay: float = knob(0.99, "with --teacher=ema: the teacher's decay per round", "[0, 1)")
    eval_every: int = knob(50, "rounds between held-out evaluations (each also writes ckpt.pt)", ">= 1")
    eval_tasks: int = knob(400, "held-out tasks per evaluation", ">= 1")
    # memory, for large models: the same gradient, computed in pieces
    micro_batch: int = knob(0, "episodes per forward/backward (whole groups); 0 = the whole round at once", ">= 0")
    grad_checkpoint: bool = knob(False, "recompute each layer's activations in the backward pass")
    logit_chunk: int = knob(0, "positions whose logits over the vocabulary are computed at once (recomputed in the "
                            "backward pass); 0 = all: set it for a large vocabulary (docs/scaling.md)", ">= 0")
    base_stats: bool = knob(True, "measure the paper's premise (success, Δ, KL per PI kind) before training")

    def __post_init__(self):
        self.check()

    def check(self):
        """Raises ConfigError naming the first field whose value is not allowed."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), field_metadata(type(self), f.name)
            kind = type(f.default)
            if not isinstance(value, kind) and not (kind is float and type(value) is int):
                raise ConfigError(f"{f.name}={value!r}: expects {article(kind)}")
            if not allows(meta.get("allowed"), value):
                raise ConfigError(f"{f.name}={value!r}: allowed {describe(meta['allowed'])} ({meta['help']})")
        if not self.out_dir:
            raise ConfigError("out_dir='': give a folder for the run's files")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"device={self.device!r}: allowed auto | cpu | cuda | cuda:N | mps")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"n_embd={self.n_embd}, n_head={self.n_head}: the width must split into n_head heads of "
                              "an even size (rotary embeddings rotate pairs)")
        if self.env != "toy" and not self.env.startswith("gem:") and not re.fullmatch(r"[\w.]+:\w+", self.env):
            raise ConfigError(f"env={self.env!r}: allowed toy | gem:<GEM env id> | module:factory")
        if self.env != "toy" and self.horizon != 1:
            raise ConfigError(f"horizon={self.horizon}: a setting of the toy world; --env={self.env} has its own tasks")

    @property
    def turn_limit(self):
        """Model turns before an episode is cut (toy_env.turn_limit: more turns for longer requests)."""
        return toy_env.turn_limit(self.max_turns, self.horizon)


def field_metadata(cls, name):
    """A subclass may override a field's default without repeating its description and allowed values."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata:
            return f.metadata
    return {}


def print_help(cfg_class):
    print(f"usage: python {os.path.basename(sys.argv[0])} [--key=value ...]   (a bare --flag sets a boolean)\n")
    for f in dataclasses.fields(cfg_class):
        meta = field_metadata(cfg_class, f.name)
        allowed = describe(meta.get("allowed"))
        print(f"  {f'--{f.name}={f.default!r}':<32} {meta.get('help', '')}" + (f"  [{allowed}]" if allowed else ""))


RENAMED = {"steps": "rounds", "forward_kl": "forward_kl_coef", "tasks_per_step": "tasks_per_round",
           "alpha_anneal_steps": "alpha_anneal_rounds"}  # flags of earlier versions: say the new name


def parse_args(cfg_class=Config, argv=None):
    """--key=value overrides of a dataclass's defaults (--flag alone sets a boolean to True; --help lists them).
    Unknown keys, values of the wrong type or outside the allowed range stop the run here, in one line."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("--help", "-h") for arg in argv):
        print_help(cfg_class)
        raise SystemExit(0)
    types = {f.name: type(f.default) for f in dataclasses.fields(cfg_class)}
    values = {}
    for arg in argv:
        key, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--"):
            raise SystemExit(f"arguments are --key=value, got {arg!r}")
        if key in RENAMED and RENAMED[key] in types:
            raise SystemExit(f"--{key} is now --{RENAMED[key]}")
        if key not in types:
            raise SystemExit(f"unknown config key {key!r}; valid keys: {', '.join(types)} (--help describes them)")
        if not eq and types[key] is bool:
            value, eq = "true", "="
        if not eq:
            raise SystemExit(f"arguments are --key=value, got {arg!r}")
        try:
            if types[key] is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                values[key] = value.lower() in ("true", "1")
            else:
                values[key] = types[key](value)
        except ValueError:
            raise SystemExit(f"--{key} expects {article(types[key])}, got {value!r}") from None
    try:
        cfg = cfg_class(**values)
    except ConfigError as err:
        raise SystemExit(f"--{err}") from None
    return cfg
