"""
bench.py -- measurements outside the training loop.

    python bench.py                 # rollout tokens/s beside HF generate; the update's cost per view and gradient
    python bench.py --probe=True    # the toy world's order-id probe (docs/toy_world.md)
    python bench.py --memory=True   # peak memory of one round on a Qwen3-0.6B-shaped model, with and without
                                    # --logit_chunk (random weights built from the config: nothing is downloaded)
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

import agent
import base
import chat
import compare
import config
import toy_env
from run import Run


@dataclass
class BenchConfig(config.Config):
    probe: bool = config.knob(False, "run the order-id probe instead of the timings (toy world, built-in model)")
    memory: bool = config.knob(False, "peak memory and time of one round of each algorithm on a Qwen3-0.6B-shaped "
                               "model, with and without --logit_chunk (one process each)")
    memory_run: str = config.knob("", "internal: ALGORITHM:CHUNK, the one round a --memory child measures")
    memory_chunk: int = config.knob(64, "--memory: the --logit_chunk a round is compared with 0 at", ">= 1")


def timings(cfg):
    """Rollout tokens/s (ours, multi-turn with a KV cache, vs HF generate on one turn of the same batch and
    length), and one update on 64 episodes: both views with gradients (π-Distill at α > 0), the teacher view
    without (π-Distill at α = 0; OPSD), and one view alone."""
    device = agent.pick_device(cfg.device)
    model, tok = base.load_base(cfg, device)
    tasks = [("train", i) for i in range(64)]
    t = time.time()
    episodes = agent.rollout(model, tok, cfg, tasks, True, torch.Generator().manual_seed(0))
    sec = time.time() - t
    n_written = sum(sum(e.mask) for e in episodes)
    print(f"rollout: 64 episodes, {n_written} model tokens in {sec:.2f}s = {n_written / sec:.0f} tokens/s "
          f"(multi-turn, KV cache across turns)")
    prompts = [tok.prompt(e.system, e.request, e.pi) + tok.turn_header(1) for e in episodes]
    ids, attn = agent.pad_left(prompts, tok.pad)
    new = max(1, n_written // 64)
    t = time.time()
    model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=new, min_new_tokens=new,
                   do_sample=True, pad_token_id=tok.pad)
    sec = time.time() - t
    print(f"HF generate: 64 x {new} tokens (one turn, same batch) in {sec:.2f}s = {64 * new / sec:.0f} tokens/s")
    _, mask, _ = agent.batch_continuations(episodes, device)
    def loss(view, grad=True):
        with torch.enable_grad() if grad else torch.no_grad():
            return (agent.score(model, tok, episodes, view, cfg.temperature)[1] * mask).sum()
    for label, step in [("both views with gradients (π-Distill, α > 0)", lambda: loss("teacher") + loss("student")),
                        ("teacher without gradients (π-Distill α = 0, OPSD)",
                         lambda: loss("teacher", grad=False) + loss("student")),
                        ("one view, plain fwd+bwd", lambda: loss("student"))]:
        step().backward()  # warm up
        t = time.time()
        for _ in range(3):
            step().backward()
        print(f"update, {label}: {(time.time() - t) / 3:.3f}s per step on 64 episodes")


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
        tokens, _ = chat.episode_tokens(tok, [(first, env.step(first)[0]), (second, env.step(second)[0]),
                                               (write, None)])
        seqs.append(tok.prompt(toy_env.system_prompt(), request) + tokens)  # ends: ' cancel', ' #12', end of turn
        listed_ids.append([tok.encode(" " + oid)[0] for oid in env.task["orders"]])
        target_ids.append(tok.encode(" " + env.task["target"])[0])
    device = next(model.parameters()).device
    ids, attn = agent.pad_left(seqs, tok.pad)
    logits = agent.forward(model, ids.to(device), attn.to(device)).logits[:, -3].float()  # predicts the id token
    probs = torch.softmax(logits / cfg.temperature, -1).cpu()
    listed = torch.stack([p[i].sum() for p, i in zip(probs, listed_ids)])
    target = probs[torch.arange(len(seqs)), torch.tensor(target_ids)]
    return listed.mean().item(), target.mean().item()


# ----------------------------------------------------------------------------- memory on a real vocabulary

QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rope_theta=1_000_000, rms_norm_eps=1e-6, tie_word_embeddings=True)  # Qwen3-0.6B's config.json


def large_model_round(cfg, algorithm, chunk, shape=QWEN3_0_6B, **overrides):
    """One round of `algorithm` (cfg's flags, then `overrides`) with the model swapped for a Qwen3 of `shape`
    (random weights, its vocabulary; the toy world's tokenizer writes ids below its size). Returns (seconds of the
    round, parameters). On CUDA the allocator's peak is reset first."""
    module, config_class = compare.ALGORITHMS[algorithm]
    from transformers import Qwen3Config, Qwen3ForCausalLM
    fields = {k: v for k, v in vars(cfg).items() if k in config_class.__dataclass_fields__}
    run_cfg = config_class(**fields | dict(logit_chunk=chunk, rounds=1, eval_every=1, eval_tasks=1, base_stats=False,
                                           out_dir=tempfile.mkdtemp()) | overrides)
    run = Run(run_cfg, algorithm)  # the built-in base and its tokenizer; the model is replaced below
    torch.manual_seed(0)
    run.model = run.teacher = Qwen3ForCausalLM(Qwen3Config(**shape)).to(run.device)  # run.start() copies it if frozen
    if run_cfg.grad_checkpoint:
        run.model.activation_checkpointing_enable()
        run.model.train()
    run.optimizer = torch.optim.AdamW(run.model.parameters(), lr=run_cfg.lr, weight_decay=0.0)
    run.save = lambda: None  # a 7 GB checkpoint is not what is measured
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    module.train(run_cfg, run)
    record = [json.loads(line) for line in open(run.metrics_path) if not json.loads(line).get("eval")][0]
    return record["time"], agent.param_count(run.model)


def one_round_on_a_large_model(cfg):
    """--memory's child: one round of --memory_run's algorithm on a Qwen3-0.6B-shaped model; prints a JSON line."""
    algorithm, chunk = cfg.memory_run.split(":")
    seconds, _ = large_model_round(cfg, algorithm, int(chunk))
    print("MEMORY " + json.dumps(dict(algorithm=algorithm, chunk=int(chunk), round_s=seconds, peak_rss_gb=peak_gb(),
                                      episodes=cfg.tasks_per_round * cfg.group_size)))


def peak_gb():
    """This process's peak resident memory so far, GB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def scoring_on_a_large_vocabulary(cfg):
    """Both views scored with gradients (agent.two_view_scores, the KL and the teacher's log-probs in the loss) by a
    2-layer model of Qwen3-0.6B's width and vocabulary, on episodes the built-in base plays: the memory the logits
    take beside the model's, as the peak RSS grows over what the model and the episodes took."""
    _, chunk, n = cfg.memory_run.split(":")
    from transformers import Qwen3Config, Qwen3ForCausalLM
    small, tok = base.load_base(config.Config(), torch.device("cpu"))
    episodes = agent.rollout(small, tok, cfg, [("train", i // 4) for i in range(int(n))], True,
                             torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_0_6B | dict(num_hidden_layers=2)))
    before = peak_gb()
    t0 = time.time()
    views = agent.two_view_scores(model, model, tok, episodes, cfg.temperature, kl="T||S", chunk=int(chunk),
                                  teacher_grad=True)
    (views["logp_S"].sum() + views["logp_T"].sum() + views["kl"].sum()).backward()
    positions = max(len(e.tokens) for e in episodes)
    print("MEMORY " + json.dumps(dict(algorithm="scoring", chunk=int(chunk), round_s=time.time() - t0,
                                      peak_rss_gb=peak_gb(),
                                      above_model_gb=peak_gb() - before,
                                      episodes=int(n), positions=positions)))


def memory(cfg, argv):
    """--memory: each algorithm with and without the chunking, one process each (a process's peak is its own)."""
    print(f"Qwen3-0.6B-shaped model ({QWEN3_0_6B['vocab_size']:,}-token vocabulary), one round of "
          f"{cfg.tasks_per_round} tasks x {cfg.group_size} episodes on {agent.pick_device(cfg.device)}")
    runs = [(a, c) for a in ("pi_distill", "opsd") for c in (0, cfg.memory_chunk)]
    # the scoring alone, where the vocabulary dominates; 64 episodes unchunked need more than this machine's 24 GB
    runs += [(f"score:{c}:{n}", c) for c, n in ((0, 16), (8, 16), (8, 64))]
    for algorithm, chunk in runs:
            run_flag = algorithm if algorithm.startswith("score") else f"{algorithm}:{chunk}"
            flags = [a for a in argv if not a.startswith("--memory")] + [f"--memory_run={run_flag}"]
            done = subprocess.run([sys.executable, os.path.abspath(__file__), *flags], capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("MEMORY ")]
            if done.returncode or not lines:
                raise SystemExit(f"{algorithm} --logit_chunk={chunk} failed:\n{done.stderr[-2000:]}")
            r = json.loads(lines[0].removeprefix("MEMORY "))
            if r["algorithm"] == "scoring":
                print(f"scoring both views (2 layers, same vocabulary) --logit_chunk={chunk:<4d} {r['episodes']} "
                      f"episodes "
                      f"x {r['positions']} positions: peak RSS {r['peak_rss_gb']:.2f} GB, "
                      f"{r['above_model_gb']:.2f} GB above the model | {r['round_s']:.1f} s", flush=True)
            else:
                print(f"{algorithm:10s} --logit_chunk={chunk:<4d} peak RSS {r['peak_rss_gb']:.2f} GB | round "
                      f"{r['round_s']:.1f} s | {r['episodes']} episodes", flush=True)


if __name__ == "__main__":
    cfg = config.parse_args(BenchConfig)
    if cfg.memory_run.startswith("score:"):
        scoring_on_a_large_vocabulary(cfg)
    elif cfg.memory_run:
        one_round_on_a_large_model(cfg)
    elif cfg.memory:
        memory(cfg, sys.argv[1:])
    elif cfg.probe:
        if cfg.env != "toy" or cfg.model:
            raise SystemExit("--probe=True reads the toy world's single-token ids: the toy world and the built-in model")
        listed, target = order_id_probe(*base.load_base(cfg, agent.pick_device(cfg.device)), cfg)
        print(f"order-id probe (student view, full listing): mass on the listed ids {listed:.3f}, on the target "
              f"{target:.3f} (target / listed {target / listed:.2f}; a uniform pick among 2-3 orders gives ~0.4)")
    else:
        timings(cfg)
