"""
agent.py -- the LM agent both algorithms share: its tiny model, batched multi-turn rollouts with a KV cache in the
chat format of chat.py, scoring the same tokens with and without the privileged information, and held-out
evaluation.
"""
import dataclasses
import importlib
import json
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

import rl
from env_api import PI_KINDS, call_env, checked_privileged_info, checked_reset, checked_step, env_factory

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


# ----------------------------------------------------------------------------- environments and rollouts


@dataclass
class Episode:
    split: str
    seed: int
    system: str
    request: str
    pi: str                  # the teacher view's privileged information ("" when the task has none)
    info: dict               # what reset returned beside the request (the toy world: the task's kind, shortcut)
    tokens: list             # continuation token ids (everything after the prompt)
    mask: list               # 1 where the model wrote the token
    logp: list               # behaviour log-prob of each token (0 where the model did not write it)
    turns: list              # (model text, observation) per turn, for printing
    reward: float = 0.0


def make_env(cfg, split):
    """An environment of a task split ("train" or "test"), chosen by --env (env_api.py says what it must do): the
    toy world (toy_env.make), a GEM game (gem_env.make) or a user's module:factory(split, cfg), imported only then."""
    module, _, factory = env_factory(cfg.env).partition(":")
    try:
        imported = importlib.import_module(module)
    except SyntaxError as err:
        raise SystemExit(f"--env={cfg.env}: {err.filename}, line {err.lineno}: {err.msg}") from None
    except ModuleNotFoundError as err:
        raise SystemExit(f"--env={cfg.env}: cannot import {module} ({err})") from None
    except Exception:  # the module itself fails as it runs: its own traceback, then one line
        call_env(f"import {module}", importlib.import_module, module)
    if not callable(getattr(imported, factory, None)):
        raise SystemExit(f"--env={cfg.env}: cannot import {factory} from {module} (it has no such function)")
    return call_env(f"{module}.{factory}({split!r}, cfg)", getattr(imported, factory), split, cfg)


ENVIRONMENTS = {}  # (config, split) -> environments built so far; reset(seed) starts each new episode


def environments(cfg, split, n):
    """n environments of a split, built once and reused by every later rollout (a GEM game is slow to make)."""
    built = ENVIRONMENTS.setdefault((json.dumps(dataclasses.asdict(cfg), sort_keys=True), split), [])
    while len(built) < n:
        built.append(make_env(cfg, split))
    return built[:n]


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
    size = cfg.tasks_per_round * cfg.group_size
    if cfg.micro_batch and len(tasks) > size:
        return [e for i in range(0, len(tasks), size)
                for e in rollout(model, tok, cfg, tasks[i:i + size], with_pi, generator, pi_kind)]
    device, pi_kind = next(model.parameters()).device, pi_kind or cfg.pi_kind
    training = model.training
    model.eval()  # with --grad_checkpoint, Hugging Face's layers drop the KV cache in training mode
    envs, episodes, chunks = [], [], []
    taken = {split: iter(environments(cfg, split, sum(s == split for s, _ in tasks))) for split in dict(tasks)}
    for split, seed in tasks:
        env = next(taken[split])
        request, info = checked_reset(env, seed)
        pi = checked_privileged_info(env, pi_kind)
        envs.append(env)
        header = tok.turn_header(1)
        episodes.append(Episode(split, seed, info["system"], request, pi, info, list(header),
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
            if not (terminated or truncated) and len(ep.turns) >= cfg.turn_limit:  # an env that never ends
                truncated = True
                note_once(f"note: {type(env).__name__} episodes are cut at --max_turns={cfg.turn_limit} model turns")
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
    ids, attn, where = view_inputs(tok, episodes, view, device)  # logits at p predict token p+1
    with autocast(device):
        logits = forward(model, ids, attn, use_cache=False).logits  # no KV cache: nothing is generated after this
    logits = logits.gather(1, where.unsqueeze(-1).expand(-1, -1, logits.shape[-1])).float() / temperature
    tokens, _, _ = batch_continuations(episodes, device)
    logp = F.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return logits, logp


def view_inputs(tok, episodes, view, device):
    """Token ids and attention mask [B, W] of each episode's prompt in one view and its continuation, and the
    positions [B, L] whose outputs predict continuation token j (at len(prompt) + j − 1)."""
    prompts = [tok.prompt(e.system, e.request, e.pi if view == "teacher" else "") for e in episodes]
    seqs = [p + e.tokens for p, e in zip(prompts, episodes)]
    width, L = max(map(len, seqs)), max(len(e.tokens) for e in episodes)
    ids = torch.tensor([s + [tok.pad] * (width - len(s)) for s in seqs], device=device)
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    where = torch.tensor([[min(len(p) + j - 1, width - 1) for j in range(L)] for p in prompts], device=device)
    return ids, attn, where


def last_hidden(model, tok, episodes, view):
    """The model's last hidden states [B, L, H] at the continuation positions of one view (what its output layer
    turns into logits), without computing any logits: model.base_model is the transformer below the LM head."""
    device = next(model.parameters()).device
    ids, attn, where = view_inputs(tok, episodes, view, device)
    with autocast(device):
        hidden = forward(model.base_model, ids, attn, use_cache=False).last_hidden_state
    return hidden.gather(1, where.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def two_view_scores(model, teacher, tok, episodes, temperature, kl=None, chunk=0, teacher_grad=False, entropy=True):
    """What both algorithms read of the two views, at every continuation position [B, L]: logp_S = log π_S(o_t)
    (the student view of `model`), logp_T = log π_T(o_t) (the PI view of `teacher`), entropy_S = H(π_S(·|s_t))
    (detached: a statistic; None with entropy=False), and with kl="T||S" or "S||T" the exact KL over the vocabulary, KL(sg π_T ‖ π_S) or
    KL(π_S ‖ sg π_T): the teacher's side is never differentiated in it. Gradients reach the student, and the
    teacher's log-probs only with teacher_grad.
    chunk=0: each view's logits [B, L, V] at once (score). chunk=c: from the last hidden states, c positions at a
    time, each chunk's logits recomputed in the backward pass (torch.utils.checkpoint), so no [B, L, V] tensor of
    either view exists: the memory a real vocabulary needs (docs/scaling.md). Equal to chunk=0 to float rounding."""
    tokens = batch_continuations(episodes, next(model.parameters()).device)[0]
    def extras(logits_S, logits_T):  # what is read beyond the sampled tokens' log-probs, in either path
        out = {"entropy_S": rl.entropy_per_position(logits_S.detach())} if entropy else {}
        if kl is not None:
            out["kl"] = (rl.kl_per_position(logits_T.detach(), logits_S) if kl == "T||S"
                         else rl.kl_per_position(logits_S, logits_T.detach()))
        return out
    if not chunk:
        with nullcontext() if teacher_grad else torch.no_grad():
            logits_T, logp_T = score(teacher, tok, episodes, "teacher", temperature)
        logits_S, logp_S = score(model, tok, episodes, "student", temperature)
        return dict(entropy_S=None, kl=None, logp_S=logp_S, logp_T=logp_T) | extras(logits_S, logits_T)
    with nullcontext() if teacher_grad else torch.no_grad():
        hidden_T = last_hidden(teacher, tok, episodes, "teacher")
    hidden_S = last_hidden(model, tok, episodes, "student")
    head_S, head_T = model.get_output_embeddings(), teacher.get_output_embeddings()
    keys = ["logp_S", "logp_T"] + (["entropy_S"] if entropy else []) + (["kl"] if kl is not None else [])
    def positions(h_S, h_T, o):  # one chunk of positions: its logits live only inside this call
        logits_S, logits_T = head_S(h_S).float() / temperature, head_T(h_T).float() / temperature
        read = dict(logp_S=F.log_softmax(logits_S, -1).gather(-1, o.unsqueeze(-1)).squeeze(-1),
                    logp_T=F.log_softmax(logits_T, -1).gather(-1, o.unsqueeze(-1)).squeeze(-1))
        read |= extras(logits_S, logits_T)
        return tuple(read[k] for k in keys)
    chunks = [torch.utils.checkpoint.checkpoint(positions, hidden_S[:, a:a + chunk], hidden_T[:, a:a + chunk],
                                                tokens[:, a:a + chunk], use_reentrant=False)
              for a in range(0, tokens.shape[1], chunk)]
    return dict(entropy_S=None, kl=None) | {k: torch.cat(parts, 1) for k, parts in zip(keys, zip(*chunks))}


def micro_batches(episodes, cfg):
    """The round's episodes in micro-batches of whole groups (a group's advantages need only its own episodes):
    --micro_batch episodes each, rounded down to whole groups (at least one), or all at once when it is 0."""
    size = max(cfg.group_size, cfg.micro_batch - cfg.micro_batch % cfg.group_size) if cfg.micro_batch else len(episodes)
    return [episodes[i:i + size] for i in range(0, len(episodes), size)]


# ----------------------------------------------------------------------------- evaluation

VAL_SEEDS = 100_000      # train-split seeds from here on are validation tasks (checkpoint selection)


@torch.no_grad()
def evaluate(model, tok, cfg, view="student", pi_kind=None, n=None, split="test", seed=1234):
    """Success of one view on n held-out tasks (fixed tasks and a fixed sampling seed: reproducible), with the
    environment's own statistics when it has them (env_api.py). split="val": validation train tasks."""
    n = n or cfg.eval_tasks
    first = VAL_SEEDS if split == "val" else 0
    tasks = [("train" if split == "val" else split, first + i) for i in range(n)]
    episodes = rollout(model, tok, cfg, tasks, view == "teacher", torch.Generator().manual_seed(seed), pi_kind)
    env = environments(cfg, tasks[0][0], 1)[0]
    stats = env.statistics(episodes) if hasattr(env, "statistics") else {}
    return dict(success=sum(e.reward for e in episodes) / n, **stats, episodes=episodes)


@torch.no_grad()
def mean_kl(model, tok, episodes, temperature, teacher=None, chunk=0):
    """KL(teacher ‖ student) of the given episodes, exact over the vocabulary: (per episode, per token). The teacher
    is the PI view of `teacher` (default: the same model); chunk: as in two_view_scores."""
    device = next(model.parameters()).device
    _, mask, _ = batch_continuations(episodes, device)
    views = two_view_scores(model, teacher or model, tok, episodes, temperature, kl="T||S", chunk=chunk, entropy=False)
    kl = (views["kl"] * mask).sum(-1)
    return kl.mean().item(), (kl.sum() / mask.sum()).item()


def prefixed(view, result):
    """An evaluation's environment statistics as flat record keys: student_shortcut, teacher_lookup_first, ..."""
    return {f"{view}_{k}": v for k, v in result.items() if k not in ("success", "episodes")}


@torch.no_grad()
def base_statistics(model, tok, cfg, n=None):
    """The paper's premise, measured: student success, teacher success per PI kind, PI utility Δ,
    and the initial teacher-student KL on the teacher's own episodes."""
    student = evaluate(model, tok, cfg, "student", n=n)
    stats = dict(student=student["success"], **prefixed("student", student))
    for kind in PI_KINDS:
        teacher = evaluate(model, tok, cfg, "teacher", kind, n=n)
        kl_episode, kl_token = mean_kl(model, tok, teacher["episodes"][:200], cfg.temperature, chunk=cfg.logit_chunk)
        stats[kind] = dict(teacher=teacher["success"], delta=teacher["success"] - student["success"],
                           kl_episode=kl_episode, kl_token=kl_token)
    return stats


def print_base_statistics(stats, cfg):
    where = f" at horizon {cfg.horizon}" if cfg.env == "toy" else ""
    print(f"base on {cfg.eval_tasks} held-out tasks{where}: student success {stats['student']:.3f}")
    for kind in PI_KINDS:
        s = stats[kind]
        print(f"  PI={kind:5s} teacher {s['teacher']:.3f}  Δ {s['delta']:+.3f}  "
              f"KL(T||S) {s['kl_episode']:.2f} nats/episode ({s['kl_token']:.3f}/token)")


def show_episode(e, label):
    print(f"--- {label} ({e.split} task {e.seed}{', shortcut' if e.info.get('shortcut') else ''}) "
          f"reward {e.reward:.0f}")
    print(f"    user: {e.request}")
    for text, obs in e.turns:
        print(f"    {text!r:34} -> {obs}")


