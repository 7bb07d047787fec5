"""
agent.py -- the LM agent both algorithms share: config and CLI, tokenizer, tiny model, base warm-up,
batched multi-turn rollouts with a KV cache, scoring the same tokens with and without PI, evaluation,
metrics log, checkpoints. pi_distill.py and opsd.py add only their loss and their training step.

An episode is one token sequence:  prompt | continuation.
    prompt        <|system|> system text [PI block] <|end|> <|user|> request <|end|>
    continuation  <|assistant|> step1 action <|end|> <|tool|> observation <|end|> <|assistant|> step2 action ...
The step labels match the PI's numbered lines ("step2 get_orders U37"), so following the PI is one look-up.
The teacher's prompt holds the PI block, the student's does not; the continuation is the same tokens in
both views, and only the tokens the model wrote (actions and their <|end|>) get loss, ratios and KL.

    python agent.py                 # builds (or loads) the base model and prints its statistics
    python agent.py --bench=True    # rollout tokens/s beside HF generate; update step beside fwd+bwd
"""
import dataclasses
import hashlib
import importlib
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass

import tiktoken
import torch
import torch.nn.functional as F

import toy_env

# ----------------------------------------------------------------------------- config


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


def describe(allowed):
    return " | ".join(allowed) if isinstance(allowed, tuple) else allowed


class ConfigError(ValueError):
    """A config value that is not allowed; parse_args turns it into one line and exit code 1."""


@dataclass
class Config:
    seed: int = knob(0, "seeds the training tasks, the sampled tokens and torch", ">= 0")
    out_dir: str = knob("runs/agent", "where metrics.jsonl, config.json, curves.png and ckpt.pt are written")
    device: str = knob("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")
    resume: bool = knob(False, "continue the run saved in out_dir/ckpt.pt")
    model: str = knob("", "empty: the tiny model below, warmed up here; or a Hugging Face name or local folder")
    n_layer: int = knob(4, "tiny model: layers", ">= 1")
    n_embd: int = knob(128, "tiny model: width (a multiple of n_head)", ">= 2")
    n_head: int = knob(8, "tiny model: attention heads", ">= 1")
    env: str = knob("toy", "toy (toy_env.py) | gem:<GEM env id> (gem_env.py) | module:factory (yours; README)")
    max_turns: int = knob(6, "an episode is cut after this many model turns, in every environment", ">= 1")
    shortcut_frac: float = knob(0.3, "toy world: fraction of tasks where the frontier skips the user lookup", "[0, 1]")
    max_action_tokens: int = knob(8, "a model turn longer than this many tokens is cut", ">= 1")
    # the base warm-up (stand-in for pretraining), cached in cache_dir keyed by these fields
    warmup_steps: int = knob(3000, "warm-up: supervised steps on the behaviour policy's episodes", ">= 1")
    warmup_batch: int = knob(32, "warm-up: episodes per step", ">= 1")
    warmup_lr: float = knob(3e-3, "warm-up: peak learning rate", "(0, 0.1]")
    warmup_skill: float = knob(0.1, "warm-up: behaviour policy's probability of the right decision (README)", "[0, 1]")
    warmup_pi_frac: float = knob(0.75, "warm-up: fraction of episodes shown with a PI block", "[0, 1]")
    warmup_eval_every: int = knob(100, "warm-up: steps between validation evaluations", ">= 1")
    warmup_seed: int = knob(2, "warm-up: seeds the model's initialisation and the behaviour episodes", ">= 0")
    cache_dir: str = knob("", "where the warmed-up base is cached; empty: cache/ beside agent.py")
    # training
    steps: int = knob(400, "training rounds (each samples tasks_per_step x group_size episodes)", ">= 0")
    lr: float = knob(3e-4, "AdamW learning rate", "(0, 0.01]")
    tasks_per_step: int = knob(8, "tasks per round", ">= 1")
    group_size: int = knob(8, "episodes per task (a group: advantages are relative to its mean)", ">= 2")
    temperature: float = knob(0.75, "sampling temperature (the paper's); the policy is softmax(logits / T)", "(0, 10]")
    clip_eps: float = knob(0.2, "PPO clip range ε of the importance ratios", "(0, 1)")
    pi_kind: str = knob("calls", "the privileged information: calls | names | hint", toy_env.PI_KINDS)
    eval_every: int = knob(50, "rounds between held-out evaluations (each also writes ckpt.pt)", ">= 1")
    eval_tasks: int = knob(400, "held-out tasks per evaluation", ">= 1")
    # memory, for large models: the same gradient, computed in pieces
    micro_batch: int = knob(0, "episodes per forward/backward (whole groups); 0 = the whole round at once", ">= 0")
    grad_checkpoint: bool = knob(False, "recompute each layer's activations in the backward pass")
    base_stats: bool = knob(True, "measure the paper's premise (success, Δ, KL per PI kind) before training")
    bench: bool = knob(False, "agent.py only: time the rollout and the update instead of building the base")

    def __post_init__(self):
        self.check()

    def check(self):
        """Raises ConfigError naming the first field whose value is not allowed."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), field_metadata(type(self), f.name)
            kind = type(f.default)
            if not isinstance(value, kind) and not (kind is float and type(value) is int):
                raise ConfigError(f"{f.name}={value!r}: expects a {kind.__name__}")
            if not allows(meta.get("allowed"), value):
                raise ConfigError(f"{f.name}={value!r}: allowed {describe(meta['allowed'])} ({meta['help']})")
        if not self.out_dir:
            raise ConfigError("out_dir='': give a folder for the run's files")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"device={self.device!r}: allowed auto | cpu | cuda | cuda:N | mps")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"n_embd={self.n_embd}, n_head={self.n_head}: the width must split into n_head heads of "
                              "an even size (rotary embeddings rotate pairs)")
        if self.env != "toy" and not self.env.startswith("gem:") and ":" not in self.env:
            raise ConfigError(f"env={self.env!r}: allowed toy | gem:<GEM env id> | module:factory")


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
            raise SystemExit(f"--{key} expects a {types[key].__name__}, got {value!r}") from None
    try:
        cfg = cfg_class(**values)
    except ConfigError as err:
        raise SystemExit(f"--{err}") from None
    check_env(make_env(cfg, "train"), cfg)  # an environment that cannot be built or misbehaves stops here
    return cfg


# ----------------------------------------------------------------------------- tokenizer

SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>", "<|pad|>")
PATTERN = r"\n| ?[^\s]+| +"  # words keep their leading space, so a word tokenizes the same everywhere


def train_bpe(texts):
    """Byte-pair merges learned on word counts, until every word seen twice is one token.
    Ties break on the bytes, so the result is deterministic."""
    words = Counter(w.encode() for t in texts for w in re.findall(PATTERN, t))
    ranks = {bytes([i]): i for i in range(256)}
    parts = {w: [bytes([b]) for b in w] for w in words}
    while True:
        pairs = Counter()
        for w, n in words.items():
            for a, b in zip(parts[w], parts[w][1:]):
                pairs[a, b] += n
        if not pairs or max(pairs.values()) < 2:
            return ranks
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        for p in parts.values():
            i = 0
            while i < len(p) - 1:
                if p[i] == a and p[i + 1] == b:
                    p[i:i + 2] = [a + b]
                i += 1


def environment_texts(n_tasks=1500):
    """Every kind of string the toy world produces: prompts, requests, PI, reasoning, actions, observations."""
    texts, rng = [], random.Random(0)
    for split in toy_env.POOLS:
        env = toy_env.ToyShopEnv(split)
        for seed in range(n_tasks):
            request, history = toy_env.noisy_episode(env, seed, rng, skill=0.3)
            texts += [request, *(a for a, _ in history), *(o for _, o in history)]
            texts += [toy_env.system_prompt(toy_env.render_pi(env.task, k, [a for a, _ in history]))
                      for k in toy_env.PI_KINDS]
            env.reset(seed)
            for reasoning, action in env.demonstration():
                texts += [reasoning, action, env.step(action)[0]]
    return texts


class ChatTokenizer:
    """A tiktoken.Encoding with BPE ranks trained on the toy world, plus role tokens.
    Each segment is encoded on its own and the token lists are concatenated (never a joined string)."""

    def __init__(self, ranks):
        specials = {s: len(ranks) + i for i, s in enumerate(SPECIALS)}
        self.enc = tiktoken.Encoding("toyshop", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=specials)
        self.system, self.user, self.assistant, self.tool, self.end, self.pad = specials.values()
        self.vocab_size = self.enc.n_vocab

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode([i for i in ids if i < self.system])

    def prompt(self, system, request, pi=""):
        return ([self.system, *self.encode(system), *self.encode(toy_env.pi_block(pi)), self.end,
                 self.user, *self.encode(request), self.end])

    def turn_header(self, turn):
        """Opens model turn `turn` (1, 2, ...): the role token and the step label the PI also uses. The model then
        writes " action" (leading space), the very tokens of the PI line "step3 return #99"."""
        return [self.assistant, *self.encode(toy_env.step_label(turn))]

    def observation(self, obs, next_turn):
        """What follows a model turn that did not end the episode: the tool's output and the next turn's header."""
        return [self.tool, *self.encode(obs), self.end, *self.turn_header(next_turn)]


class HFChatTokenizer:
    """A pretrained model's own tokenizer and chat template behind ChatTokenizer's interface (--model=...).
    The PI block goes at the end of the system message; the tool's observation comes back as a user message
    (the role every template has); a model turn ends with the tokenizer's eos token (<|im_end|> for ChatML).
    The template's pieces are found by rendering short conversations and taking the differences."""

    def __init__(self, hf):
        self.hf, self.vocab_size, self.end = hf, len(hf), hf.eos_token_id
        self.pad = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
        head = [dict(role="system", content="S"), dict(role="user", content="U")]
        self.generation_prompt = self._render(head, True)[len(self._render(head)):]
        # the text around an observation, rendered once (not per turn): from the end of a model turn ("A" + eos) to
        # a placeholder user message, and from it to the next generation prompt. One rendering, not a difference of
        # two: templates such as Qwen3's render an earlier turn differently once a user message follows it.
        marker, closing = "OBSERVATION", "A" + hf.decode([self.end])
        text = self._render(head + [dict(role="assistant", content="A"), dict(role="user", content=marker)], True)
        self.obs_before, self.obs_after = text[text.index(closing) + len(closing):].split(marker)

    def _render(self, messages, generation_prompt=False):
        # enable_thinking=False: Qwen3 answers without a <think> block (a turn here is a few tokens); other templates
        # ignore the flag
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                           enable_thinking=False)

    def encode(self, text):
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids):
        return self.hf.decode(ids, skip_special_tokens=True)

    def prompt(self, system, request, pi=""):
        return self.encode(self._render([dict(role="system", content=system + toy_env.pi_block(pi)),
                                         dict(role="user", content=request)]))

    def turn_header(self, turn):
        return self.encode(self.generation_prompt + toy_env.step_label(turn))

    def observation(self, obs, next_turn):
        return self.encode(self.obs_before + obs + self.obs_after + toy_env.step_label(next_turn))


def episode_tokens(tok, turns):
    """Continuation tokens and model-written mask for a list of (model text, observation or None at the end)."""
    tokens = tok.turn_header(1)
    mask = [0] * len(tokens)
    for turn, (text, obs) in enumerate(turns, 1):
        written = tok.encode(" " + text) + [tok.end]
        tokens += written
        mask += [1] * len(written)
        if obs is not None:
            after = tok.observation(obs, turn + 1)
            tokens += after
            mask += [0] * len(after)
    return tokens, mask


# ----------------------------------------------------------------------------- model


def pick_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device={name}: CUDA is not available here (torch {torch.__version__}, "
                         f"{'no GPU found' if torch.version.cuda else 'a CPU-only build'}); use --device=cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise SystemExit(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA device(s), 0-based")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("--device=mps: MPS (Apple GPU) is not available here; use --device=cpu or auto")
    return torch.device(name)


def param_count(model):
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def tiny_model(cfg, vocab_size):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=cfg.n_embd, intermediate_size=3 * cfg.n_embd,
                         num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                         num_key_value_heads=cfg.n_head, head_dim=cfg.n_embd // cfg.n_head,
                         max_position_embeddings=512, tie_word_embeddings=True)
    return Qwen3ForCausalLM(config)


def forward(model, ids, attention_mask, **kw):
    """Position ids count only real tokens, so left padding and gaps between chunks do not shift them."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
    return model(input_ids=ids, attention_mask=attention_mask, position_ids=positions, **kw)


# ----------------------------------------------------------------------------- rollouts


@dataclass
class Episode:
    split: str
    seed: int
    system: str
    request: str
    pi: str                  # the teacher view's privileged information ("" when the task has none)
    shortcut: bool
    tokens: list             # continuation token ids (everything after the prompt)
    mask: list               # 1 where the model wrote the token
    logp: list               # behaviour log-prob of each token (0 where the model did not write it)
    turns: list              # (model text, observation) per turn, for printing
    reward: float = 0.0


def make_env(cfg, split):
    """The environment of a task split ("train" or "test"), chosen by --env; the README's "The environment API"
    says what the agent needs of it."""
    if cfg.env == "toy":
        return toy_env.ToyShopEnv(split, max_turns=cfg.max_turns, shortcut_frac=cfg.shortcut_frac)
    if cfg.env.startswith("gem:"):
        import gem_env  # needs the gem-llm package: imported only for GEM games
        return gem_env.GemEnv(cfg.env.removeprefix("gem:"), split)
    module, _, factory = cfg.env.partition(":")
    try:
        make = getattr(importlib.import_module(module), factory)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"--env={cfg.env}: cannot import {factory} from {module} ({err})") from None
    return make(split, cfg)


def env_error(env, call, expected, got):
    return SystemExit(f"--env: {type(env).__name__}.{call} must return {expected}; it returned {got!r:.200}")


def checked_reset(env, seed):
    out = env.reset(seed)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str) and isinstance(out[1], dict)
            and isinstance(out[1].get("system"), str)):
        raise env_error(env, f"reset({seed})", "(request: str, info: dict with a 'system' prompt str)", out)
    return out


def checked_privileged_info(env, kind):
    pi = env.privileged_info(kind)
    if not isinstance(pi, str) or not pi.strip():
        raise env_error(env, f"privileged_info({kind!r})", "a non-empty str (else the teacher is the student)", pi)
    return pi


def checked_step(env, text):
    out = env.step(text)
    if not (isinstance(out, tuple) and len(out) == 5 and isinstance(out[0], str)
            and isinstance(out[1], (int, float)) and math.isfinite(out[1]) and 0 <= out[1] <= 1):
        raise env_error(env, "step(text)", "(observation: str, reward in [0, 1], terminated, truncated, info)", out)
    return out


def check_env(env, cfg):
    """The first episode's reset and privileged information, checked before any model loads (every later call
    is checked in rollout)."""
    checked_reset(env, 0)
    for kind in toy_env.PI_KINDS if cfg.base_stats else (cfg.pi_kind,):
        checked_privileged_info(env, kind)


NOTED = set()


def note_once(message):
    if message not in NOTED:
        NOTED.add(message)
        print(message)


def pad_left(seqs, pad):
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    return ids, torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])


@torch.no_grad()
def rollout(model, tok, cfg, tasks, with_pi, generator, pi_kind=None):
    """Play one episode per (split, seed) task, batched, from the teacher view (with_pi=True: the PI block of
    `pi_kind` in the prompt) or the student view. One KV cache spans all turns: each forward feeds only the new
    tokens (left-padded chunks; attention masks and position ids skip the padding). With --micro_batch, at most
    one round's worth of episodes at a time: a large model's KV cache for an evaluation's 400 would not fit."""
    size = cfg.tasks_per_step * cfg.group_size
    if cfg.micro_batch and len(tasks) > size:
        return [e for i in range(0, len(tasks), size)
                for e in rollout(model, tok, cfg, tasks[i:i + size], with_pi, generator, pi_kind)]
    device, pi_kind = next(model.parameters()).device, pi_kind or cfg.pi_kind
    training = model.training
    model.eval()  # with --grad_checkpoint, Hugging Face's layers drop the KV cache in training mode
    envs, episodes, chunks = [], [], []
    for split, seed in tasks:
        env = make_env(cfg, split)
        request, info = checked_reset(env, seed)
        pi = checked_privileged_info(env, pi_kind)
        envs.append(env)
        header = tok.turn_header(1)
        episodes.append(Episode(split, seed, info["system"], request, pi, info.get("shortcut", False), list(header),
                                [0] * len(header), [0.0] * len(header), []))
        chunks.append(tok.prompt(info["system"], request, pi if with_pi else "") + header)
    rows = list(range(len(tasks)))         # batch row -> episode index; finished episodes leave the batch
    cache, attn = None, torch.zeros(len(tasks), 0, dtype=torch.long, device=device)
    while rows:
        written = {i: [] for i in rows}
        for _ in range(cfg.max_action_tokens):
            ids, mask = pad_left(chunks, tok.pad)
            attn = torch.cat([attn, mask.to(device)], 1)
            with autocast(device):
                out = forward(model, ids.to(device), attn, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logp = F.log_softmax(out.logits[:, -1].float() / cfg.temperature, -1)
            token = torch.multinomial(logp.exp().cpu(), 1, generator=generator).squeeze(1)
            chunks = []
            for r, i in enumerate(rows):
                if written[i] and written[i][-1] == tok.end:   # this row already finished its turn
                    chunks.append([])
                    continue
                t = token[r].item()
                written[i].append(t)
                episodes[i].tokens.append(t)
                episodes[i].mask.append(1)
                episodes[i].logp.append(logp[r, t].item())
                chunks.append([t])
            if all(w[-1] == tok.end for w in written.values()):
                break
        unfed, keep, chunks = chunks, [], []       # tokens sampled last are not in the cache yet
        for r, i in enumerate(rows):
            ep, env = episodes[i], envs[i]
            pending = unfed[r]
            if written[i][-1] != tok.end:           # cut at max_action_tokens: close the turn for the model
                ep.tokens.append(tok.end), ep.mask.append(0), ep.logp.append(0.0)
                pending = pending + [tok.end]
            text = tok.decode(written[i])
            obs, reward, terminated, truncated, _ = checked_step(env, text)
            ep.turns.append((text, obs))
            if not (terminated or truncated) and len(ep.turns) >= cfg.max_turns:  # an env that never ends
                truncated = True
                note_once(f"note: {type(env).__name__} episodes are cut at --max_turns={cfg.max_turns} model turns")
            if terminated or truncated:
                ep.reward = reward
                continue
            after = tok.observation(obs, len(ep.turns) + 1)
            ep.tokens += after
            ep.mask += [0] * len(after)
            ep.logp += [0.0] * len(after)
            keep.append(r)
            chunks.append(pending + after)
        if keep and len(keep) < len(rows):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            attn = attn[index]
        rows = [rows[r] for r in keep]
    model.train(training)
    return episodes


# ----------------------------------------------------------------------------- scoring two views


def batch_continuations(episodes, device):
    """Continuation tokens, model mask and behaviour log-probs as right-padded [B, L] tensors."""
    width = max(len(e.tokens) for e in episodes)
    def pad(key, value):
        return torch.tensor([getattr(e, key) + [value] * (width - len(e.tokens)) for e in episodes], device=device)
    return pad("tokens", 0), pad("mask", 0).float(), pad("logp", 0.0).float()


def score(model, tok, episodes, view, temperature):
    """Policy logits [B, L, V] and log-probs [B, L] of every continuation token under the teacher prompt
    (view="teacher", PI block in) or the student prompt (view="student"). The prompts differ in length; the
    gather below reads each episode's logits from its own prompt length on, so position j is the same
    continuation token in both views. Gradients flow unless the caller disables them."""
    device = next(model.parameters()).device
    prompts = [tok.prompt(e.system, e.request, e.pi if view == "teacher" else "") for e in episodes]
    seqs = [p + e.tokens for p, e in zip(prompts, episodes)]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad] * (width - len(s)) for s in seqs], device=device)
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    with autocast(device):
        logits = forward(model, ids, attn, use_cache=False).logits  # no KV cache: nothing is generated after this
    L = max(len(e.tokens) for e in episodes)
    # logits at position p predict token p+1: continuation token j sits at len(prompt)+j
    where = torch.tensor([[min(len(p) + j - 1, width - 1) for j in range(L)] for p in prompts], device=device)
    logits = logits.gather(1, where.unsqueeze(-1).expand(-1, -1, logits.shape[-1])).float() / temperature
    tokens, _, _ = batch_continuations(episodes, device)
    logp = F.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return logits, logp


def kl_per_position(logits_p, logits_q):
    """Exact KL(p || q) = sum_v p(v) (log p(v) - log q(v)) at every position: [B, T, V] -> [B, T]."""
    logp, logq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def kl_full_vocab(logits_p, logits_q, mask):
    """Exact KL(p || q) at every position, times mask [B, T], summed per sequence -> [B]."""
    return (kl_per_position(logits_p, logits_q) * mask).sum(-1)


def micro_batches(episodes, cfg):
    """The round's episodes in micro-batches of whole groups (a group's advantages need only its own episodes):
    --micro_batch episodes each, rounded down to whole groups (at least one), or all at once when it is 0."""
    size = max(cfg.group_size, cfg.micro_batch - cfg.micro_batch % cfg.group_size) if cfg.micro_batch else len(episodes)
    return [episodes[i:i + size] for i in range(0, len(episodes), size)]


def group_advantages(rewards, group_size):
    """A_g = R_g - mean of its group (no division by the std, PAPER.md §3); [B] -> [B]."""
    r = rewards.view(-1, group_size)
    return (r - r.mean(1, keepdim=True)).view(-1)


def groups_with_signal(advantages, group_size):
    """[B] bool: episodes whose group has a nonzero advantage; the others carry no signal and are dropped."""
    return advantages.view(-1, group_size).abs().amax(1).repeat_interleave(group_size) > 1e-6


def clipped_surrogate(logp_new, logp_old, advantages, eps, ratio_cap=None, max_log_ratio=20.0):
    """Per-token PPO term -min(rho A, clip(rho, 1-eps, 1+eps) A), rho = exp(logp_new - logp_old), [B, T].
    The advantage is per episode [B] (shared by its tokens) or per token [B, T].
    ratio_cap (dual-clip) bounds -rho A where A < 0 and rho is huge. Log-ratios are clamped before exp.
    Returns (per-token loss, rho, per-token clipped indicator)."""
    rho = torch.exp((logp_new - logp_old).clamp(-max_log_ratio, max_log_ratio))
    A = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)  # per episode [B] or per token [B, T]
    unclipped, clipped = rho * A, rho.clamp(1 - eps, 1 + eps) * A
    loss = -torch.min(unclipped, clipped)
    if ratio_cap is not None:
        loss = torch.where(A < 0, torch.minimum(loss, -ratio_cap * A), loss)
    was_clipped = (clipped < unclipped) | ((A < 0) & (rho > ratio_cap) if ratio_cap is not None else False)
    return loss, rho, was_clipped.float()


# ----------------------------------------------------------------------------- evaluation

VAL_SEEDS = 100_000      # train-split seeds from here on are validation tasks (checkpoint selection)
WARMUP_SEEDS = 1_000_000  # warm-up tasks: seeds from here on, in both pools, never used elsewhere


@torch.no_grad()
def evaluate(model, tok, cfg, view="student", pi_kind=None, n=None, split="test", seed=1234):
    """Success of one view on n held-out tasks (fixed tasks and a fixed sampling seed: reproducible),
    overall and on the shortcut / non-shortcut tasks; on shortcut tasks, how often the first action is the
    user lookup (behaviour the student can reproduce) rather than the frontier's shortcut."""
    n = n or cfg.eval_tasks
    first = VAL_SEEDS if split == "val" else 0
    tasks = [("train" if split == "val" else split, first + i) for i in range(n)]
    episodes = rollout(model, tok, cfg, tasks, view == "teacher", torch.Generator().manual_seed(seed), pi_kind)
    short = [e for e in episodes if e.shortcut]
    normal = [e for e in episodes if not e.shortcut]
    def rate(hits):  # nan where there is nothing to count (no shortcut tasks: other environments have none)
        return sum(hits) / len(hits) if hits else math.nan
    return dict(success=rate([e.reward for e in episodes]), shortcut=rate([e.reward for e in short]),
                normal=rate([e.reward for e in normal]),
                lookup_first=rate([e.turns[0][0].split()[:1] == ["find_user"] for e in short]), episodes=episodes)


@torch.no_grad()
def mean_kl(model, tok, episodes, temperature):
    """KL(teacher || student) of the given episodes, exact over the vocabulary: (per episode, per token)."""
    device = next(model.parameters()).device
    _, mask, _ = batch_continuations(episodes, device)
    kl = kl_full_vocab(score(model, tok, episodes, "teacher", temperature)[0],
                       score(model, tok, episodes, "student", temperature)[0], mask)
    return kl.mean().item(), (kl.sum() / mask.sum()).item()


@torch.no_grad()
def order_id_probe(model, tok, cfg, n_tasks=600):
    """Can the model match the request's item to its order without get_orders' item filter? Fed the frontier
    agent's first steps of the held-out cancel/return tasks (student view, no shortcut) but with the whole listing
    (`get_orders U37`, no item), how much next-token mass does it put on the listed order ids, and on the target,
    where the frontier writes its id? Listed mass measures copying an id out of an observation; target / listed,
    matching the request's item (a uniform pick among 2-3 listed orders gives ~0.4). Returns (listed, target),
    each averaged over the tasks."""
    env = toy_env.ToyShopEnv("test", cfg.max_turns, shortcut_frac=0.0)
    seqs, listed_ids, target_ids = [], [], []
    for seed in range(n_tasks):
        request, _ = env.reset(seed)
        if env.task["kind"] == "status":
            continue
        first, _, write = [action for _, action in toy_env.frontier_demo(env.task)][:3]
        second = f"get_orders {env.task['uid']}"
        tokens, _ = episode_tokens(tok, [(first, env.step(first)[0]), (second, env.step(second)[0]), (write, None)])
        seqs.append(tok.prompt(toy_env.system_prompt(), request) + tokens)  # ends: ' cancel', ' #12', end of turn
        listed_ids.append([tok.encode(" " + oid)[0] for oid in env.task["orders"]])
        target_ids.append(tok.encode(" " + env.task["target"])[0])
    device = next(model.parameters()).device
    ids, attn = pad_left(seqs, tok.pad)
    logits = forward(model, ids.to(device), attn.to(device)).logits[:, -3].float()  # predicts the id token
    probs = torch.softmax(logits / cfg.temperature, -1).cpu()
    listed = torch.stack([p[i].sum() for p, i in zip(probs, listed_ids)])
    target = probs[torch.arange(len(seqs)), torch.tensor(target_ids)]
    return listed.mean().item(), target.mean().item()


@torch.no_grad()
def base_statistics(model, tok, cfg, n=None):
    """The paper's premise, measured: student success, teacher success per PI kind, PI utility Δ,
    and the initial teacher-student KL on the teacher's own episodes."""
    student = evaluate(model, tok, cfg, "student", n=n)
    stats = dict(student=student["success"], student_shortcut=student["shortcut"], student_normal=student["normal"])
    for kind in toy_env.PI_KINDS:
        teacher = evaluate(model, tok, cfg, "teacher", kind, n=n)
        kl_episode, kl_token = mean_kl(model, tok, teacher["episodes"][:200], cfg.temperature)
        stats[kind] = dict(teacher=teacher["success"], delta=teacher["success"] - student["success"],
                           kl_episode=kl_episode, kl_token=kl_token)
    return stats


def print_base_statistics(stats, n):
    print(f"base on {n} held-out tasks: student success {stats['student']:.3f}")
    for kind in toy_env.PI_KINDS:
        s = stats[kind]
        print(f"  PI={kind:5s} teacher {s['teacher']:.3f}  Δ {s['delta']:+.3f}  "
              f"KL(T||S) {s['kl_episode']:.2f} nats/episode ({s['kl_token']:.3f}/token)")


def show_episode(e, label):
    print(f"--- {label} ({e.split} task {e.seed}{', shortcut' if e.shortcut else ''}) reward {e.reward:.0f}")
    print(f"    user: {e.request}")
    for text, obs in e.turns:
        print(f"    {text!r:34} -> {obs}")


# ----------------------------------------------------------------------------- base warm-up


def warmup_example(tok, cfg, rng):
    """One episode of the noisy behaviour policy on a random task of either pool; with probability
    warmup_pi_frac its prompt shows a PI block listing the actions it took, so the base learns to follow PI."""
    split = rng.choice(list(toy_env.POOLS))
    env = make_env(cfg, split)
    request, history = toy_env.noisy_episode(env, WARMUP_SEEDS + rng.randrange(10**6), rng, cfg.warmup_skill)
    actions = [a for a, _ in history]
    pi = toy_env.render_pi(env.task, rng.choice(toy_env.PI_KINDS), actions) if rng.random() < cfg.warmup_pi_frac else ""
    tokens, mask = episode_tokens(tok, [(a, o) for a, o in history[:-1]] + [(actions[-1], None)])
    prompt = tok.prompt(toy_env.system_prompt(), request, pi)
    return prompt + tokens, [0] * len(prompt) + mask


def supervised_step(model, optimizer, examples, pad, device):
    """One step of next-token cross-entropy on the masked tokens of (tokens, mask) examples."""
    width = max(len(t) for t, _ in examples)
    ids = torch.tensor([t + [pad] * (width - len(t)) for t, _ in examples], device=device)
    mask = torch.tensor([m + [0] * (width - len(m)) for _, m in examples], device=device).float()
    attn = (torch.arange(width, device=device) < torch.tensor([len(t) for t, _ in examples], device=device)[:, None])
    with autocast(device):
        logits = forward(model, ids, attn.long(), use_cache=False).logits[:, :-1].float()
    loss = (F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]).sum() / mask[:, 1:].sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def warm_up(model, tok, cfg, device):
    """Teach the format, the tools, grounding and PI-following on the behaviour policy's episodes. Keeps the
    weights with the best teacher success (tool-calls PI, frontier's actions) on validation train tasks."""
    rng = random.Random(cfg.warmup_seed)
    torch.manual_seed(cfg.warmup_seed)
    select = dataclasses.replace(cfg, temperature=1.0)  # fixed, so the cached base does not depend on --temperature
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.warmup_lr, weight_decay=0.0)
    best, t0 = (-1.0, None), time.time()
    for step in range(1, cfg.warmup_steps + 1):
        lr = cfg.warmup_lr * min(1.0, step / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.warmup_steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = supervised_step(model, optimizer, [warmup_example(tok, cfg, rng) for _ in range(cfg.warmup_batch)],
                               tok.pad, device)
        if step % cfg.warmup_eval_every == 0 or step == cfg.warmup_steps:
            teacher = evaluate(model, tok, select, "teacher", "calls", n=200, split="val")["success"]
            student = evaluate(model, tok, select, "student", n=200, split="val")["success"]
            print(f"warm-up {step:5d} | loss {loss:.3f} | val teacher(calls) {teacher:.3f} student {student:.3f} "
                  f"| {time.time() - t0:.0f}s", flush=True)
            if teacher > best[0]:
                best = (teacher, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    return time.time() - t0


def base_cache_path(cfg):
    # what shapes the warmed-up model; not max_action_tokens (it cuts sampled turns; warm-up actions are shorter)
    # nor shortcut_frac (only the frontier agent takes shortcuts, and the warm-up never shows it)
    keys = ["n_layer", "n_embd", "n_head", "max_turns", "warmup_steps",
            "warmup_batch", "warmup_lr", "warmup_skill", "warmup_pi_frac", "warmup_eval_every", "warmup_seed"]
    world = hashlib.sha256("\n".join(environment_texts(n_tasks=50)).encode()).hexdigest()  # the env's text formats
    blob = json.dumps({k: getattr(cfg, k) for k in keys} | {"world": world}, sort_keys=True)
    folder = cfg.cache_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache")
    return os.path.join(folder, f"base_{hashlib.sha256(blob.encode()).hexdigest()[:12]}.pt")


def load_file(path, what, keys, fix):
    """torch.load of one of our own files, tensors and plain data only (weights_only: a file someone hands you
    cannot run code); a file that cannot be read, or lacks the keys we wrote, stops the run with one line."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated, corrupt or foreign file: every unpickling error means the same here
        raise SystemExit(f"{path}: cannot read this {what} ({type(err).__name__}: {str(err)[:200]}); {fix}") from None
    missing = [k for k in keys if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise SystemExit(f"{path}: not a {what} of this project (no {', '.join(missing)}); {fix}")
    return saved


def load_pretrained(name, device):
    """A Hugging Face model and tokenizer: a local folder, the local hub cache, or a download (only when named)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if name.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(name)):
        raise SystemExit(f"--model={name}: no such folder (give a local model folder or a Hugging Face name)")
    try:
        hf = AutoTokenizer.from_pretrained(name, local_files_only=True)
        return AutoModelForCausalLM.from_pretrained(name, local_files_only=True).to(device), hf
    except OSError:
        pass  # not on disk: download it, if the hub can be reached at all (else transformers retries for ~1 min)
    import socket
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
    except OSError:
        raise SystemExit(f"--model={name}: not a local folder nor in the Hugging Face cache, and huggingface.co "
                         "cannot be reached: download it where there is a network (huggingface-cli download "
                         f"{name}) or pass a local folder") from None
    try:
        hf = AutoTokenizer.from_pretrained(name)
        return AutoModelForCausalLM.from_pretrained(name).to(device), hf
    except OSError as err:
        raise SystemExit(f"--model={name}: cannot load it ({str(err).splitlines()[0]})") from None


def load_base(cfg, device):
    """The tokenizer and the warmed-up base model, from the cache when present (else built and cached);
    or, with --model=<Hugging Face name or local path>, that pretrained model and its own tokenizer."""
    if cfg.model:
        model, hf = load_pretrained(cfg.model, device)
        print(f"base model: {cfg.model} ({param_count(model)} parameters)")
        return model, HFChatTokenizer(hf)
    if cfg.env != "toy":
        raise SystemExit(f"--env={cfg.env} needs a pretrained model: pass --model=<Hugging Face name or local path>. "
                         "The built-in tiny model knows only the toy world (its tokenizer and warm-up come from it).")
    path = base_cache_path(cfg)
    if os.path.exists(path):
        saved = load_file(path, "cached base model", ("model", "ranks", "seconds"), "delete it to rebuild the base")
        tok = ChatTokenizer(saved["ranks"])
        model = tiny_model(cfg, tok.vocab_size)
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as err:
            raise SystemExit(f"{path}: its weights do not fit this model ({str(err).splitlines()[0]}); "
                             "delete it to rebuild the base") from None
        print(f"base model: loaded {path} (warm-up took {saved['seconds']:.0f}s when built)")
        return model.to(device), tok
    t0 = time.time()
    tok = ChatTokenizer(train_bpe(environment_texts()))
    print(f"tokenizer: {tok.vocab_size} tokens, trained in {time.time() - t0:.1f}s")
    torch.manual_seed(cfg.warmup_seed)
    model = tiny_model(cfg, tok.vocab_size).to(device)
    print(f"model: {param_count(model)} parameters; warming up for "
          f"{cfg.warmup_steps} steps (cached in {path} for later runs)")
    seconds = warm_up(model, tok, cfg, device)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(dict(model=model.state_dict(), ranks=tok.enc._mergeable_ranks, seconds=seconds), path + ".tmp")
    os.replace(path + ".tmp", path)  # never leave a half-written cache behind
    return model, tok


# ----------------------------------------------------------------------------- a training run


NEW_RUN = "start a new run in another --out_dir (or delete the file)"  # what to do with a checkpoint we refuse


class Run:
    """What every training script shares: device, model, optimizer, RNGs, the step loop with its printed
    line, evaluation, metrics.jsonl, curves.png and resumable checkpoints. An algorithm is a function
    train_step(run) -> dict of statistics, called once per gradient step."""

    def __init__(self, cfg, name):
        self.cfg, self.name = cfg, name
        self.device = pick_device(cfg.device)
        self.ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
        self.metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
        self.checkpoint = self.read_checkpoint() if cfg.resume else None  # refused here, before any warm-up
        self.model, self.tok = load_base(cfg, self.device)
        if cfg.grad_checkpoint:  # keep each layer's input only; recompute the rest in the backward pass
            self.model.activation_checkpointing_enable()  # transformers 5's name for gradient_checkpointing_enable
            self.model.train()  # it acts in training mode only (no dropout in Qwen3 or Llama: nothing else changes)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.rng = random.Random(cfg.seed)                      # which training tasks
        self.generator = torch.Generator().manual_seed(cfg.seed)  # which tokens are sampled
        torch.manual_seed(cfg.seed)
        self.extra = {}           # algorithm modules to checkpoint (e.g. an EMA teacher)
        self.step = 0
        self.saved_step = self.checkpoint["step"] if self.checkpoint else None  # the round ckpt.pt holds
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
        except OSError as err:
            raise SystemExit(f"--out_dir={cfg.out_dir}: cannot create it ({err.strerror})") from None

    def sample_tasks(self):
        """tasks_per_step train tasks, each repeated group_size times (one group per task)."""
        seeds = [self.rng.randrange(VAL_SEEDS) for _ in range(self.cfg.tasks_per_step)]
        return [("train", s) for s in seeds for _ in range(self.cfg.group_size)]

    def update(self, losses):
        """One gradient step on the round's loss, given as (loss, n, stats) per micro-batch: the loss a mean over the
        micro-batch's n model tokens (one micro-batch, the whole round, unless --micro_batch). Each is back-propagated
        before the next micro-batch is scored, so only one holds activations. Weighted by n and divided by the total,
        the summed gradients are exactly the gradient of the whole batch's loss (Σ over all its model tokens / their
        number). Returns the stats averaged over the tokens; {} and no step when there was nothing to learn from."""
        self.optimizer.zero_grad(set_to_none=True)
        parts = []
        for loss, n, stats in losses:
            if not torch.isfinite(loss):
                kept = (f"{self.ckpt_path} holds round {self.saved_step}" if self.saved_step is not None else
                        "no checkpoint was written yet")
                raise FloatingPointError(f"loss is {loss.item()} in round {self.step + 1}; {kept} (checkpoints are "
                                         "written at every evaluation, every "
                                         f"--eval_every={self.cfg.eval_every} rounds)")
            # weights relative to the first micro-batch, so that a single one is exactly loss.backward()
            (loss * (n / parts[0][0]) if parts else loss).backward()
            parts.append((n, stats))
        if not parts:
            return {}
        total = sum(n for n, _ in parts)
        if len(parts) > 1:
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad *= parts[0][0] / total
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        if len(parts) == 1:
            return parts[0][1]
        return {k: sum(n * stats[k] for n, stats in parts) / total for k in parts[0][1]}

    # --- records
    def log(self, record):
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self):
        state = dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                     config=dataclasses.asdict(self.cfg), config_class=type(self.cfg).__name__, step=self.step,
                     rng=self.rng.getstate(), generator=self.generator.get_state(), torch_rng=torch.get_rng_state(),
                     extra={k: m.state_dict() for k, m in self.extra.items()})
        torch.save(state, self.ckpt_path + ".tmp")
        os.replace(self.ckpt_path + ".tmp", self.ckpt_path)  # never leave a half-written checkpoint behind
        self.saved_step = self.step

    def read_checkpoint(self):
        """The checkpoint in out_dir, refused (the run's files untouched) unless this script and config made it."""
        if not os.path.exists(self.ckpt_path):
            raise SystemExit(f"--resume=True but there is no checkpoint at {self.ckpt_path}")
        state = load_file(self.ckpt_path, "checkpoint", ("model", "optimizer", "config", "config_class", "step", "rng",
                                                        "generator", "torch_rng", "extra"), NEW_RUN)
        if state["config_class"] != type(self.cfg).__name__:
            raise SystemExit(f"{self.ckpt_path} was made by another script's config ({state['config_class']}, not "
                             f"{type(self.cfg).__name__}): resume it with that script, or {NEW_RUN}")
        ours = dataclasses.asdict(self.cfg)
        defaults = dataclasses.asdict(type(self.cfg)())  # a checkpoint older than a flag was made with its default
        diff = [k for k in ours if k not in ("resume", "steps") and state["config"].get(k, defaults[k]) != ours[k]]
        if diff:
            raise SystemExit(f"checkpoint {self.ckpt_path} was made with another config: "
                             + ", ".join(f"{k}={state['config'].get(k)!r} (now {ours[k]!r})" for k in diff))
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
        self.step = state["step"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if os.path.exists(self.metrics_path):  # drop records written after the checkpoint
            lines = [l for l in open(self.metrics_path) if json.loads(l)["step"] <= self.step]
            open(self.metrics_path, "w").writelines(lines)
        print(f"resumed {self.ckpt_path} at round {self.step}")

    def evaluate(self):
        """Held-out success of the student (no PI) and of the teacher (cfg.pi_kind)."""
        s = evaluate(self.model, self.tok, self.cfg, "student")
        t = evaluate(self.model, self.tok, self.cfg, "teacher")
        return dict(student=s["success"], student_shortcut=s["shortcut"], student_normal=s["normal"],
                    student_lookup_first=s["lookup_first"],
                    teacher=t["success"], teacher_shortcut=t["shortcut"], teacher_lookup_first=t["lookup_first"],
                    kl_token=mean_kl(self.model, self.tok, t["episodes"][:200], self.cfg.temperature)[1],
                    **self.probe()), s, t

    def probe(self):
        if self.cfg.env != "toy" or self.cfg.model:  # the probe reads the toy world's single-token ids
            return {}
        listed, target = order_id_probe(self.model, self.tok, self.cfg)
        return dict(student_order_listed=listed, student_order_target=target)

    def print_eval(self, e):
        print(f"eval step {self.step:4d} | student {e['student']:.3f} (shortcut tasks {e['student_shortcut']:.3f}) "
              f"| teacher {e['teacher']:.3f} (shortcut {e['teacher_shortcut']:.3f}, looks user up first "
              f"{e['teacher_lookup_first']:.2f}) | KL(T||S) {e['kl_token']:.3f}/token", flush=True)

    # --- the loop
    def train(self, train_step):
        cfg = self.cfg
        print(f"{self.name}: config {json.dumps(dataclasses.asdict(cfg))}")
        if cfg.resume:
            self.resume()
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:  # after a resume was accepted
            json.dump(dataclasses.asdict(cfg), f, indent=1)
        if not cfg.resume:
            open(self.metrics_path, "w").close()
            base = base_statistics(self.model, self.tok, cfg) if cfg.base_stats else None
            if base:
                print_base_statistics(base, cfg.eval_tasks)
            self.log(dict(step=0, eval=True, **self.evaluate()[0], base=base))
        t0, last_eval = time.time(), None
        while self.step < cfg.steps:
            t_step = time.time()
            stats = train_step(self)
            self.step += 1
            stats["time"] = time.time() - t_step
            self.log(dict(step=self.step, **stats))
            print(f"step {self.step:4d} | " + " | ".join(f"{k} {v:.3g}" for k, v in stats.items()), flush=True)
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                e, s, t = last_eval = self.evaluate()
                self.print_eval(e)
                self.log(dict(step=self.step, eval=True, **e))
                self.save()
        e, s, t = last_eval or self.evaluate()
        show_episode(s["episodes"][0], "student (no PI)")
        show_episode(t["episodes"][0], f"teacher (PI={cfg.pi_kind})")
        records = [json.loads(l) for l in open(self.metrics_path)]
        evals = [r for r in records if r.get("eval")]
        frontier = " (frontier agent 1.000)" if cfg.env == "toy" else ""  # the toy's scripted agent solves every task
        print(f"summary: held-out student success {evals[0]['student']:.3f} -> {evals[-1]['student']:.3f}"
              f"{frontier}, teacher {evals[0]['teacher']:.3f} -> {evals[-1]['teacher']:.3f}, "
              f"KL(T||S) {evals[0]['kl_token']:.3f} -> {evals[-1]['kl_token']:.3f}/token, "
              f"{time.time() - t0:.0f}s of training")
        if "student_order_listed" in evals[0]:
            print(f"order-id probe (student): mass on the listed ids {evals[0]['student_order_listed']:.3f} -> "
                  f"{evals[-1]['student_order_listed']:.3f}, on the target {evals[0]['student_order_target']:.3f} -> "
                  f"{evals[-1]['student_order_target']:.3f}")
        plot_curves(records, os.path.join(cfg.out_dir, "curves.png"), self.name)
        return evals[-1]


def plot_curves(records, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    evals = [r for r in records if r.get("eval")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in [("student", "student (no PI)"), ("teacher", "teacher (PI)"),
                       ("student_shortcut", "student, shortcut tasks")]:
        ax1.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=label)
    ax1.set(xlabel="round", ylabel="held-out success", ylim=(0, 1), title=title)
    ax1.legend()
    ax2.plot([r["step"] for r in evals], [r["kl_token"] for r in evals], marker="o")
    ax2.set(xlabel="round", ylabel="KL(teacher || student) per token", title="teacher-student KL")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- benchmark


def benchmark(cfg):
    """Rollout tokens/s (ours, multi-turn with a KV cache, vs HF generate on one turn of the same batch and
    length) and one update step vs one plain forward+backward of the same batch."""
    device = pick_device(cfg.device)
    model, tok = load_base(cfg, device)
    tasks = [("train", i) for i in range(64)]
    t = time.time()
    episodes = rollout(model, tok, cfg, tasks, True, torch.Generator().manual_seed(0))
    sec = time.time() - t
    n_written = sum(sum(e.mask) for e in episodes)
    print(f"rollout: 64 episodes, {n_written} model tokens in {sec:.2f}s = {n_written / sec:.0f} tokens/s "
          f"(multi-turn, KV cache across turns)")
    prompts = [tok.prompt(e.system, e.request, e.pi) + tok.turn_header(1) for e in episodes]
    ids, attn = pad_left(prompts, tok.pad)
    new = max(1, n_written // 64)
    t = time.time()
    model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=new, min_new_tokens=new,
                   do_sample=True, pad_token_id=tok.pad)
    sec = time.time() - t
    print(f"HF generate: 64 x {new} tokens (one turn, same batch) in {sec:.2f}s = {64 * new / sec:.0f} tokens/s")
    _, mask, _ = batch_continuations(episodes, device)
    for label in ("update (two views, fwd+bwd)", "plain fwd+bwd (teacher view)"):
        t = time.time()
        for _ in range(3):
            lt = score(model, tok, episodes, "teacher", cfg.temperature)[1]
            loss = (lt * mask).sum()
            if label.startswith("update"):
                loss = loss + (score(model, tok, episodes, "student", cfg.temperature)[1] * mask).sum()
            loss.backward()
        print(f"{label}: {(time.time() - t) / 3:.3f}s per step on 64 episodes")


if __name__ == "__main__":
    cfg = parse_args()
    if cfg.bench:
        benchmark(cfg)
    else:
        model, tok = load_base(cfg, pick_device(cfg.device))
        print_base_statistics(base_statistics(model, tok, cfg), cfg.eval_tasks)
        show_episode(evaluate(model, tok, cfg, "student", n=8)["episodes"][0], "student (no PI)")
        show_episode(evaluate(model, tok, cfg, "teacher", n=8)["episodes"][0], "teacher (PI=calls)")
