"""
bench.py -- measurements outside the training loop.

    python bench.py                 # rollout tokens/s beside HF generate; the update's cost per view and gradient
    python bench.py --probe=True    # the toy world's order-id probe (docs/toy_world.md)
"""
import time
from dataclasses import dataclass

import torch

import agent
import base
import chat
import config
import toy_env


@dataclass
class BenchConfig(config.Config):
    probe: bool = config.knob(False, "run the order-id probe instead of the timings (toy world, built-in model)")


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


if __name__ == "__main__":
    cfg = config.parse_args(BenchConfig)
    if cfg.probe:
        if cfg.env != "toy" or cfg.model:
            raise SystemExit("--probe=True reads the toy world's single-token ids: the toy world and the built-in model")
        listed, target = order_id_probe(*base.load_base(cfg, agent.pick_device(cfg.device)), cfg)
        print(f"order-id probe (student view, full listing): mass on the listed ids {listed:.3f}, on the target "
              f"{target:.3f} (target / listed {target / listed:.2f}; a uniform pick among 2-3 orders gives ~0.4)")
    else:
        timings(cfg)
