"""
base.py -- the base model both views start from: the tiny model warmed up here (the stand-in for pretraining),
with a BPE tokenizer trained on the toy world's text, cached in cache/; or, with --model, a pretrained Hugging
Face model behind the same tokenizer interface.

    python base.py       # builds (or loads) the base and prints the paper's premise on it
"""
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import re
import time
from collections import Counter

import torch
import torch.nn.functional as F

import agent
import chat
import toy_env
from config import Config, parse_args
from env_api import PI_KINDS

WARMUP_SEEDS = 1_000_000  # warm-up tasks: seeds from here on, in both pools, never used elsewhere

# ----------------------------------------------------------------------------- the tokenizer's BPE ranks


def train_bpe(texts):
    """Byte-pair merges learned on word counts, until every word seen twice is one token.
    Ties break on the bytes, so the result is deterministic."""
    words = Counter(w.encode() for t in texts for w in re.findall(chat.PATTERN, t))
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
    for split, horizon in itertools.product(toy_env.POOLS, range(1, toy_env.MAX_HORIZON + 1)):
        env = toy_env.ToyShopEnv(split, horizon=horizon)
        for seed in range(n_tasks):
            request, history = toy_env.noisy_episode(env, seed, rng, skill=0.3)
            texts += [request, *(a for a, _ in history), *(o for _, o in history)]
            texts += [toy_env.system_prompt(toy_env.render_pi(env.task, k, [a for a, _ in history]))
                      for k in PI_KINDS]
            env.reset(seed)
            for reasoning, action in env.demonstration():
                texts += [reasoning, action, env.step(action)[0]]
    return texts


# ----------------------------------------------------------------------------- a pretrained model (--model)


# ----------------------------------------------------------------------------- the warm-up and its cache


def warmup_example(tok, cfg, rng):
    """One episode of the noisy behaviour policy on a random task of either pool and any horizon (one base for
    every --horizon); with probability warmup_pi_frac its prompt shows a PI block listing the actions it took,
    so the base learns to follow PI."""
    split, horizon = rng.choice(list(toy_env.POOLS)), rng.randint(1, toy_env.MAX_HORIZON)
    env = toy_env.ToyShopEnv(split, cfg.max_turns, cfg.shortcut_frac, horizon)
    request, history = toy_env.noisy_episode(env, WARMUP_SEEDS + rng.randrange(10**6), rng, cfg.warmup_skill)
    actions = [a for a, _ in history]
    pi = toy_env.render_pi(env.task, rng.choice(PI_KINDS), actions) if rng.random() < cfg.warmup_pi_frac else ""
    tokens, mask = chat.episode_tokens(tok, [(a, o) for a, o in history[:-1]] + [(actions[-1], None)])
    prompt = tok.prompt(toy_env.system_prompt(), request, pi)
    return prompt + tokens, [0] * len(prompt) + mask


def supervised_step(model, optimizer, examples, pad, device):
    """One step of next-token cross-entropy on the masked tokens of (tokens, mask) examples."""
    width = max(len(t) for t, _ in examples)
    ids = torch.tensor([t + [pad] * (width - len(t)) for t, _ in examples], device=device)
    mask = torch.tensor([m + [0] * (width - len(m)) for _, m in examples], device=device).float()
    attn = (torch.arange(width, device=device) < torch.tensor([len(t) for t, _ in examples], device=device)[:, None])
    with agent.autocast(device):
        logits = agent.forward(model, ids, attn.long(), use_cache=False).logits[:, :-1].float()
    loss = (F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]).sum() / mask[:, 1:].sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def warm_up(model, tok, cfg, device):
    """Teach the format, the tools, grounding and PI-following on the behaviour policy's episodes. Keeps the
    weights with the best teacher success (tool-calls PI, frontier's actions) on validation train tasks (up to 100
    per horizon), averaged over the horizons."""
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
            teachers, students = [], []
            for horizon in range(1, toy_env.MAX_HORIZON + 1):
                at = dataclasses.replace(select, horizon=horizon)
                n = min(100, cfg.eval_tasks)
                teachers.append(agent.evaluate(model, tok, at, "teacher", "calls", n=n, split="val")["success"])
                students.append(agent.evaluate(model, tok, at, "student", n=n, split="val")["success"])
            teacher = sum(teachers) / len(teachers)
            print(f"warm-up {step:5d} | loss {loss:.3f} | val teacher(calls) {teacher:.3f} "
                  f"({' '.join(f'{t:.2f}' for t in teachers)} at horizons 1..{toy_env.MAX_HORIZON}) student "
                  f"{' '.join(f'{s:.2f}' for s in students)} | {time.time() - t0:.0f}s", flush=True)
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
    if os.path.isdir(os.path.expanduser(name)) and not os.path.exists(os.path.join(os.path.expanduser(name), "config.json")):
        raise SystemExit(f"--model={name}: this folder holds no Hugging Face model (no config.json); give the folder "
                         "that save_pretrained wrote")
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


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_toy_hf_model(path, hidden_size=32, layers=1):
    """A randomly initialised Qwen3 with a byte-level BPE tokenizer trained on the toy world's text and a ChatML
    template, saved the way a Hugging Face checkpoint is, in `path` (returned): a --model folder made without any
    download, for the tests and gpu_check.py."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(environment_texts(n_tasks=100), trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|im_start|>", "<|im_end|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>")
    hf.chat_template = CHATML
    hf.save_pretrained(path)
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(vocab_size=len(hf), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                 num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                                 head_dim=hidden_size // 2)).save_pretrained(path)
    return path


def load_base(cfg, device):
    """The tokenizer and the warmed-up base model, from the cache when present (else built and cached);
    or, with --model=<Hugging Face name or local path>, that pretrained model and its own tokenizer."""
    if cfg.model:
        model, hf = load_pretrained(cfg.model, device)
        print(f"base model: {cfg.model} ({agent.param_count(model)} parameters)")
        return model, chat.HFChatTokenizer(hf)
    if cfg.env != "toy":
        raise SystemExit(f"--env={cfg.env} needs a pretrained model: pass --model=<Hugging Face name or local path>. "
                         "The built-in tiny model knows only the toy world (its tokenizer and warm-up come from it).")
    path = base_cache_path(cfg)
    if os.path.exists(path):
        saved = load_file(path, "cached base model", ("model", "ranks", "seconds"), "delete it to rebuild the base")
        tok = chat.ChatTokenizer(saved["ranks"])
        model = agent.tiny_model(cfg, tok.vocab_size)
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as err:
            raise SystemExit(f"{path}: its weights do not fit this model ({str(err).splitlines()[0]}); "
                             "delete it to rebuild the base") from None
        print(f"base model: loaded {path} (warm-up took {saved['seconds']:.0f}s when built)")
        return model.to(device), tok
    t0 = time.time()
    tok = chat.ChatTokenizer(train_bpe(environment_texts()))
    print(f"tokenizer: {tok.vocab_size} tokens, trained in {time.time() - t0:.1f}s")
    torch.manual_seed(cfg.warmup_seed)
    model = agent.tiny_model(cfg, tok.vocab_size).to(device)
    print(f"model: {agent.param_count(model)} parameters; warming up for "
          f"{cfg.warmup_steps} steps (cached in {path} for later runs)")
    seconds = warm_up(model, tok, cfg, device)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(dict(model=model.state_dict(), ranks=tok.enc._mergeable_ranks, seconds=seconds), path + ".tmp")
    os.replace(path + ".tmp", path)  # never leave a half-written cache behind
    return model, tok




if __name__ == "__main__":
    cfg = parse_args(Config)
    model, tok = load_base(cfg, agent.pick_device(cfg.device))
    agent.print_base_statistics(agent.base_statistics(model, tok, cfg), cfg)
    agent.show_episode(agent.evaluate(model, tok, cfg, "student", n=8)["episodes"][0], "student (no PI)")
    agent.show_episode(agent.evaluate(model, tok, cfg, "teacher", n=8)["episodes"][0], f"teacher (PI={cfg.pi_kind})")
