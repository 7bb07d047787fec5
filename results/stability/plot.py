"""One panel per setting (pi_distill_cosine is the default, pi_distill_constant the paper's constant rate), one colour
per seed: held-out student success (solid), the sampling teacher (dashed); and the table of docs/experiments.md
(held-out student % at every evaluation, best / last, validation best / last).

    python results/stability/plot.py      # -> results/stability/curves.png; each run: <setting>_s<seed>/metrics.jsonl
"""
import glob
import json
import math
import os
import re

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

here = os.path.dirname(os.path.abspath(__file__))
runs = {}
for path in sorted(glob.glob(os.path.join(here, "*", "metrics.jsonl"))):
    setting, seed = re.fullmatch(r"(.+)_s(\d+)", os.path.basename(os.path.dirname(path))).groups()
    runs.setdefault(setting, {})[int(seed)] = [r for r in map(json.loads, open(path)) if r.get("eval")]
cols = 3
fig, axes = plt.subplots(math.ceil(len(runs) / cols), cols, figsize=(5 * cols, 3.4 * math.ceil(len(runs) / cols)),
                         squeeze=False, sharex=True, sharey=True)
for ax, (setting, seeds) in zip(axes.flat, runs.items()):
    for seed, evals in sorted(seeds.items()):
        rounds = [r["round"] for r in evals]
        line, = ax.plot(rounds, [r["student"] for r in evals], marker=".", label=f"seed {seed}")
        ax.plot(rounds, [r["teacher"] for r in evals], "--", color=line.get_color(), alpha=0.6)
    ax.set(title=setting, ylim=(0, 1), xlim=(0, 400))
    ax.legend(fontsize=8, loc="lower right")
for ax in axes.flat[len(runs):]:
    ax.axis("off")
for ax in axes[:, 0]:
    ax.set_ylabel("held-out success")
for ax in axes[-1]:
    ax.set_xlabel("round")
fig.suptitle("student (no PI), solid; sampling teacher (PI = tool calls), dashed")
fig.tight_layout()
fig.savefig(os.path.join(here, "curves.png"), dpi=90)

print("| run | student at rounds 25, 50, … (held-out, %) | best / last | val best / last | sampling teacher first → last |")
print("|---|---|---|---|---|")
for setting, seeds in runs.items():
    for seed, evals in sorted(seeds.items()):
        student = [100 * r["student"] for r in evals[1:]]
        val = [100 * r["val"] for r in evals[1:] if "val" in r]  # not logged in the first 125 rounds of one run
        print(f"| {setting}, seed {seed} | {' '.join(f'{x:.1f}' for x in student)} | {max(student):.1f} / {student[-1]:.1f} "
              f"| {max(val):.1f} / {val[-1]:.1f} | {100 * evals[0]['teacher']:.1f} → {100 * evals[-1]['teacher']:.1f} |")
