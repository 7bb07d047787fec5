"""
gpu_check.py -- one command for a machine with a GPU (about 10 minutes on one), printing what no CPU here can:

    python gpu_check.py                              # on CUDA
    python gpu_check.py --device=cpu --tiny=True     # the same code path with tiny settings (test_all.py runs it)

1. the default `python pi_distill.py` on this device: rounds per second and its first evaluations;
2. a Qwen3-0.6B-shaped model (random weights from its config, the real vocabulary) at the paper's batch, 16 tasks x
   4 episodes in micro-batches of 8 with activation checkpointing: peak memory and seconds per round for π-Distill
   and OPSD, with and without --logit_chunk;
3. one round of each TRL trainer in this process, on a small Hugging Face model saved here.
Nothing is downloaded. Paste its output into docs/scaling.md with the GPU's name.
"""
import json
import os
import tempfile
import time
from dataclasses import dataclass

import torch

import agent
import base
import bench
import config
import pi_distill


@dataclass
class GpuCheckConfig(config.Config):
    tiny: bool = config.knob(False, "tiny settings (a few rounds, a small model of the same shape family): the test")
    check_rounds: int = config.knob(30, "part 1: rounds of the default run", ">= 1")
    check_chunk: int = config.knob(64, "part 2: the --logit_chunk compared with 0", ">= 1")


def peak_memory(device):
    """Peak memory since the last reset: the allocator's on CUDA, the process's RSS elsewhere (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def default_run(cfg, out_dir):
    run_cfg = pi_distill.PiDistillConfig(device=cfg.device, rounds=cfg.check_rounds, base_stats=False, out_dir=out_dir,
                                         eval_every=max(1, cfg.check_rounds // 3), eval_tasks=4 if cfg.tiny else 400)
    t0 = time.time()
    pi_distill.train(run_cfg)
    records = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    rounds = [r for r in records if not r.get("eval")]
    evals = ", ".join(f"round {r['round']} {r['student']:.3f}" for r in records if r.get("eval"))
    return (f"1. python pi_distill.py, {cfg.check_rounds} rounds: {len(rounds) / sum(r['time'] for r in rounds):.2f} "
            f"rounds/s ({time.time() - t0:.0f} s with the evaluations); held-out student {evals}")


def large_model_round(cfg, algorithm, chunk):
    """One round at the paper's batch with a Qwen3-0.6B-shaped model (with --tiny, a 1-layer one of width 64)."""
    shape = bench.QWEN3_0_6B | (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=2, head_dim=32, vocab_size=2000) if cfg.tiny else {})
    tasks = 2 if cfg.tiny else 16
    seconds, parameters = bench.large_model_round(cfg, algorithm, chunk, shape, tasks_per_round=tasks, group_size=4,
                                                  micro_batch=8, grad_checkpoint=True)
    peak = peak_memory(agent.pick_device(cfg.device))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return (f"2. {algorithm:10s} {parameters} parameters, {tasks * 4} episodes, --logit_chunk={chunk}: peak "
            f"{peak:.2f} GB, {seconds:.1f} s per round")


def trl_rounds(cfg, folder):
    import trl_trainers
    model_dir = base.save_toy_hf_model(os.path.join(folder, "hf_model"))
    lines, trl_device = [], "cpu" if cfg.device == "cpu" else "auto"  # with TRL, accelerate places the rank
    for name in ("pi_distill", "opsd"):
        t0 = time.time()
        trl_trainers.main([name, f"--model={model_dir}", "--rounds=1", "--tasks_per_round=2", "--group_size=2",
                           "--eval_tasks=2", "--base_stats=False", f"--device={trl_device}",
                           f"--out_dir={os.path.join(folder, 'trl_' + name)}"])
        lines.append(f"3. trl_trainers.py {name}: one round in {time.time() - t0:.0f} s")
    return lines


def main(argv=None):
    cfg = config.parse_args(GpuCheckConfig, argv)
    device = agent.pick_device(cfg.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} (not a GPU)"
    folder = tempfile.mkdtemp(prefix="gpu_check_")
    lines = [f"gpu_check on {name}, torch {torch.__version__}"]
    lines.append(default_run(cfg, os.path.join(folder, "default")))
    for algorithm in ("pi_distill", "opsd"):
        for chunk in (0, cfg.check_chunk):
            lines.append(large_model_round(cfg, algorithm, chunk))
    lines += trl_rounds(cfg, folder)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
