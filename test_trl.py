"""
test_trl.py -- the TRL trainers (trl_trainers.py) against the project's own loops, on CPU, with no download: on the same
episodes their loss and gradients equal pi_distill.train's and opsd.train's, π-Distill at α = 1 equals plain
GRPOTrainer._compute_loss, the advantages are R − β·KL − group mean, and a 2-process torchrun (gloo) run ends with
equal parameters on both ranks and round statistics of both ranks.

    python -m pytest -q test_trl.py
"""
import copy
import dataclasses
import importlib.util
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

import agent
import opsd
import pi_distill
import rl
import toy_env
import trl_trainers
from run import Run
from test_all import hf_model_dir  # noqa: F401  (the session fixture: a random Qwen3 saved as a HF checkpoint)

HERE = os.path.dirname(os.path.abspath(__file__))


class CoinShop(toy_env.ToyShopEnv):
    """The toy world whose success is a coin flipped on the task and the actions taken: an untrained model then
    gets both rewards to learn from (reproducibly)."""

    def reset(self, seed):
        self.seed, self.actions = seed, []
        return super().reset(seed)

    def step(self, action_text):
        self.actions.append(action_text)
        return super().step(action_text)

    def success(self):
        return random.Random(f"{self.seed} {self.actions}").random() < 0.5


class TaskCoinShop(CoinShop):
    """A coin per task alone: a round's mean reward depends only on which tasks it holds."""

    def success(self):
        return random.Random(self.seed).random() < 0.5


def coin_shop(split, cfg):  # --env=test_trl:coin_shop
    return CoinShop(split, cfg.max_turns, cfg.shortcut_frac)


def task_coin_shop(split, cfg):  # --env=test_trl:task_coin_shop
    return TaskCoinShop(split, cfg.max_turns, cfg.shortcut_frac)


def small(cfg_class, hf_dir, out_dir, **kw):
    return cfg_class(**dict(dict(model=hf_dir, out_dir=str(out_dir), rounds=1, tasks_per_round=2, group_size=4,
                                 eval_tasks=2, base_stats=False, device="cpu", env="test_trl:coin_shop"), **kw))


def one_batch(trainer):
    """One round's generation batch through TRL's own _generate_and_score_completions (which calls play())."""
    inputs = [dict(prompt=f"train {seed}") for seed in (3, 3, 3, 3, 8, 8, 8, 8)]  # one dict per row, as TRL's
    return trainer._generate_and_score_completions(inputs)


def trl_gradients(trainer, out):
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, out)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in trainer.model.parameters()]


def native_gradients(module, cfg, episodes, monkeypatch):
    """The native loop's gradient of its first update, with agent.rollout replaced by the given episodes (its
    evaluations are skipped): captured where the loop clips the gradient norm."""
    grads = []
    def capture(parameters, max_norm):
        parameters = list(parameters)
        grads.append([p.grad.clone() for p in parameters])
        return torch.tensor(0.0)
    monkeypatch.setattr(agent, "rollout", lambda *a, **k: copy.deepcopy(episodes))
    skipped = dict(student=0.0, val=0.0, teacher=0.0, kl_token=0.0)
    monkeypatch.setattr(Run, "evaluate", lambda self: (skipped, None, None))
    monkeypatch.setattr(Run, "finish", lambda self: None)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", capture)
    module.train(cfg)
    records = [json.loads(line) for line in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    first = [r for r in records if not r.get("eval")][0]
    alpha = getattr(cfg, "alpha", 0.0)  # the loss TRL returns: π-Distill's forward KL is logged beside "loss"
    return first["loss"] + (1 - alpha) * getattr(cfg, "forward_kl_coef", 0.0) * first.get("forward_kl", 0.0), grads[0]


def assert_close(grads_a, grads_b):
    scale = max(g.abs().max().item() for g in grads_a)
    assert scale > 0
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("alpha,trust_region,forward_kl_coef", [(0.0, False, 0.0), (0.5, False, 0.0),
                                                                (1.0, False, 0.0), (0.0, True, 0.0), (0.5, False, 0.25)])
def test_trl_pi_distill_equals_the_native_loop(hf_model_dir, tmp_path, alpha, trust_region, forward_kl_coef,  # noqa: F811
                                               monkeypatch):
    cfg = small(pi_distill.PiDistillConfig, hf_model_dir, tmp_path / "trl", alpha=alpha, alpha_anneal_rounds=0,
                updates_per_round=1, student_trust_region=trust_region, forward_kl_coef=forward_kl_coef)
    trainer = trl_trainers.PiDistillTrainer(cfg)
    out = one_batch(trainer)
    episodes = trainer.episodes
    # advantages = R − β·KL_seq − group mean, with the exact KL(π_T ‖ π_S) per written token
    R = torch.tensor([e.reward - cfg.leak_penalty * pi_distill.leaks(e) for e in episodes])
    assert 0 < R.mean() < 1  # the coin gives both outcomes
    _, mask, _ = agent.batch_continuations(episodes, "cpu")
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        kl = rl.kl_per_episode(agent.score(model, trainer.tok, episodes, "teacher", cfg.temperature)[0],
                               agent.score(model, trainer.tok, episodes, "student", cfg.temperature)[0], mask)
    shaped = (R - cfg.beta * kl / mask.sum(1)).view(2, 4)
    torch.testing.assert_close(out["advantages"], (shaped - shaped.mean(1, keepdim=True)).view(-1))
    loss, grads = trl_gradients(trainer, out)
    native_loss, native_grads = native_gradients(pi_distill, dataclasses.replace(cfg, out_dir=str(tmp_path / "native")),
                                                 episodes, monkeypatch)
    assert loss == pytest.approx(native_loss, rel=1e-4, abs=1e-7)
    assert_close(grads, native_grads)


def test_trl_pi_distill_at_alpha_1_is_plain_grpo(hf_model_dir, tmp_path):  # noqa: F811
    """α = 1: the teacher term alone, the clipped surrogate of GRPO with the KL-shaped advantage, equal to
    GRPOTrainer._compute_loss (loss_type="dapo") on the same inputs. One task, so no prompt is padded: TRL's own
    forward has no position ids."""
    cfg = small(pi_distill.PiDistillConfig, hf_model_dir, tmp_path, alpha=1.0, alpha_anneal_rounds=0,
                tasks_per_round=1, group_size=8)
    trainer = trl_trainers.PiDistillTrainer(cfg)
    out = trainer._generate_and_score_completions([dict(prompt="train 3") for _ in range(8)])
    assert out["keep"].all() and out["prompt_mask"].all()
    loss, grads = trl_gradients(trainer, out)
    grpo_inputs = {k: out[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
                                       "num_items_in_batch")}
    grpo_inputs |= dict(tool_mask=out["tool_mask"], old_per_token_logps=out["sampling_per_token_logps"])
    trainer.model.zero_grad(set_to_none=True)
    grpo_loss = trl_trainers.GRPOTrainer._compute_loss(trainer, trainer.model, grpo_inputs)
    grpo_loss.backward()
    assert loss == pytest.approx(grpo_loss.item(), rel=1e-4, abs=1e-7)
    assert_close(grads, [p.grad for p in trainer.model.parameters()])


@pytest.mark.parametrize("kl_estimator", ["analytic", "reward", "token"])
def test_trl_opsd_equals_the_native_loop(hf_model_dir, tmp_path, kl_estimator, monkeypatch):  # noqa: F811
    cfg = small(opsd.OPSDConfig, hf_model_dir, tmp_path / "trl", kl_estimator=kl_estimator)
    trainer = trl_trainers.OPSDTrainer(cfg)
    out = one_batch(trainer)
    loss, grads = trl_gradients(trainer, out)
    native_loss, native_grads = native_gradients(opsd, dataclasses.replace(cfg, out_dir=str(tmp_path / "native")),
                                                 trainer.episodes, monkeypatch)
    assert loss == pytest.approx(native_loss, rel=1e-4, abs=1e-7)
    assert_close(grads, native_grads)


def test_trl_refuses_what_it_would_ignore(hf_model_dir, tmp_path):  # noqa: F811
    with pytest.raises(SystemExit, match="needs --model"):
        trl_trainers.PiDistillTrainer(small(pi_distill.PiDistillConfig, "", tmp_path))
    with pytest.raises(SystemExit, match="does not divide"):
        trl_trainers.PiDistillTrainer(small(pi_distill.PiDistillConfig, hf_model_dir, tmp_path, micro_batch=3))
    args = trl_trainers.GRPOConfig(output_dir=str(tmp_path), loss_type="grpo", scale_rewards="group",
                                   num_generations=4, per_device_train_batch_size=8, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="loss_type='grpo'.*scale_rewards='group'"):
        trl_trainers.PiDistillTrainer(small(pi_distill.PiDistillConfig, hf_model_dir, tmp_path), args=args)


def run_cli(args, out_dir, processes=1):
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=HERE)
    done = subprocess.run(launcher + [os.path.join(HERE, "trl_trainers.py"), *args, f"--out_dir={out_dir}"],
                          capture_output=True, text=True, env=env, cwd=HERE, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return done.stdout, [r for r in records if not r.get("eval")], [r for r in records if r.get("eval")]


def test_trl_two_process_run_keeps_the_ranks_equal(hf_model_dir, tmp_path):  # noqa: F811
    """torchrun --nproc_per_node 2 (gloo, CPU): three tasks of two episodes per round, so one group straddles the two
    ranks. Both ranks end with the same parameters; each round's record covers both ranks' episodes (6, not 3),
    and its mean reward (a coin per task) equals the one-process run's, which plays the same tasks."""
    flags = ["pi_distill", f"--model={hf_model_dir}", "--env=test_trl:task_coin_shop", "--rounds=3",
             "--tasks_per_round=3", "--group_size=2", "--eval_tasks=2", "--eval_every=2", "--base_stats=False",
             "--device=cpu", "--leak_penalty=0"]
    stdout, rounds, evals = run_cli(flags, tmp_path / "two", processes=2)
    assert "parameters equal on all 2 ranks" in stdout
    assert [r["round"] for r in rounds] == [1, 2, 3] and all(r["episodes"] == 6 for r in rounds)
    assert [e["round"] for e in evals] == [0, 2, 3]  # every --eval_every rounds and at the end
    assert os.path.exists(tmp_path / "two" / "model.safetensors")
    _, single, _ = run_cli(flags, tmp_path / "one")
    assert [r["env_reward"] for r in rounds] == pytest.approx([r["env_reward"] for r in single])
    assert len({r["env_reward"] for r in rounds}) > 1 or rounds[0]["env_reward"] not in (0.0, 1.0)


def test_trl_run_resumes_from_its_checkpoint(hf_model_dir, tmp_path):  # noqa: F811
    flags = ["pi_distill", f"--model={hf_model_dir}", "--env=test_trl:coin_shop", "--tasks_per_round=2",
             "--group_size=2", "--eval_tasks=2", "--eval_every=1", "--base_stats=False", "--device=cpu",
             f"--out_dir={tmp_path}"]
    trl_trainers.main(flags + ["--rounds=2"])
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a record written after the last checkpoint is dropped
        f.write(json.dumps(dict(round=3, env_reward=0.0)) + "\n")
    trl_trainers.main(flags + ["--rounds=3", "--resume=True"])
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["round"] for r in records if not r.get("eval")] == [1, 2, 3]
    assert [r["round"] for r in records if r.get("eval")] == [0, 1, 2, 3]
    with pytest.raises(SystemExit, match="no checkpoint"):
        trl_trainers.main(flags[:-1] + [f"--out_dir={tmp_path / 'empty'}", "--resume=True"])
    before = {p.name for p in tmp_path.iterdir()}
    for argv, needle in [(flags + ["--rounds=4"], "holds a run .*--resume=True"),  # refused before any work
                         (["opsd"] + flags[1:] + ["--rounds=4", "--resume=True"], "another script's config"),
                         (flags + ["--rounds=4", "--resume=True", "--lr=0.01"], r"another config: lr=0.0003 \(now 0.01\)"),
                         (flags + ["--rounds=0"], "--rounds=0")]:
        with pytest.raises(SystemExit, match=needle):
            trl_trainers.main(argv)
    assert {p.name for p in tmp_path.iterdir()} == before
    last = max(tmp_path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    weights = last / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a checkpoint torn mid-write
    with pytest.raises(SystemExit, match=f"{last}: cannot be read .*delete that folder"):
        trl_trainers.main(flags + ["--rounds=4", "--resume=True"])


@pytest.mark.skipif(importlib.util.find_spec("gem") is None, reason="the gem-llm package is not installed")
def test_trl_trains_on_a_gem_game(hf_model_dir, tmp_path):  # noqa: F811
    """The same rollout serves every environment of the project's API: a GEM game through TRL, one round."""
    cfg = small(opsd.OPSDConfig, hf_model_dir, tmp_path, env="gem:game:GuessTheNumber-v0-easy", max_turns=3,
                max_action_tokens=6)
    trainer = trl_trainers.OPSDTrainer(cfg)
    out = one_batch(trainer)
    assert all(e.turns and e.split == "train" for e in trainer.episodes)
    loss, grads = trl_gradients(trainer, out)
    assert math.isfinite(loss) and any(g.abs().sum() > 0 for g in grads)


def test_trl_takes_no_optimizer_step_on_a_round_without_a_kept_group(hf_model_dir, tmp_path, monkeypatch):  # noqa: F811
    """As the native loop: round 1 keeps every group (the KL term gives a gradient), round 2 none. Adam's momentum
    would still move the weights in round 2 if it stepped: after two rounds they equal those after one."""
    kept_calls = []
    def kept(self, rewards, advantages):  # round 1: all groups kept; round 2: none
        kept_calls.append(1)
        return torch.full(rewards.shape, len(kept_calls) == 1, dtype=torch.bool, device=rewards.device)
    monkeypatch.setattr(trl_trainers.OPSDTrainer, "kept_groups", kept)
    weights = []
    for rounds in (1, 2):
        kept_calls.clear()
        trainer = trl_trainers.OPSDTrainer(small(opsd.OPSDConfig, hf_model_dir, tmp_path / str(rounds), rounds=rounds,
                                                 eval_every=10))
        before = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.train()
        weights.append([p.detach().clone() for p in trainer.model.parameters()])
    assert any(not torch.equal(a, b) for a, b in zip(before, weights[0]))  # round 1 stepped
    assert all(torch.equal(a, b) for a, b in zip(*weights))  # round 2 did not


def test_trl_pi_distill_trains_on_the_forward_kl_alone_in_a_round_without_a_kept_group(hf_model_dir, tmp_path,  # noqa: F811
                                                                                       monkeypatch):
    """As the native loop: the student's forward KL learns from every episode, kept or not; without it a round of
    no kept group moves nothing."""
    monkeypatch.setattr(trl_trainers.PiDistillTrainer, "kept_groups",
                        lambda self, rewards, advantages: torch.zeros(rewards.shape, dtype=torch.bool))
    moved = {}
    for c in (0.0, 0.25):
        trainer = trl_trainers.PiDistillTrainer(small(pi_distill.PiDistillConfig, hf_model_dir, tmp_path / str(c),
                                                      forward_kl_coef=c, eval_every=10))
        before = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.train()
        moved[c] = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert moved == {0.0: False, 0.25: True}
