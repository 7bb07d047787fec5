"""Held-out student success (solid) and validation success (dotted) against round, for every run saved here.

    python results/stability/plot.py      # -> results/stability/curves.png; each run: <name>/metrics.jsonl
"""
import glob
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

here = os.path.dirname(os.path.abspath(__file__))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
for path in sorted(glob.glob(os.path.join(here, "*", "metrics.jsonl"))):
    name = os.path.basename(os.path.dirname(path))
    evals = [r for r in map(json.loads, open(path)) if r.get("eval")]
    line, = ax1.plot([r["round"] for r in evals], [r["student"] for r in evals], marker=".", label=name)
    ax1.plot([r["round"] for r in evals if "val" in r], [r["val"] for r in evals if "val" in r], ":",
             color=line.get_color())
    ax2.plot([r["round"] for r in evals], [r["teacher"] for r in evals], marker=".", color=line.get_color(), label=name)
ax1.set(xlabel="round", ylabel="student success (solid: held-out test, dotted: validation)", ylim=(0, 1),
        title="student (no PI)")
ax2.set(xlabel="round", ylabel="held-out success", ylim=(0, 1), title="teacher (PI = tool calls) used for sampling")
ax1.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(here, "curves.png"), dpi=100)
