"""The test suite beside test_losses.py (the losses against exact oracles): the toy world, the flags, the agent,
runs, other environments and compare.py, grouped by the file under test.
Fast on a 2-core CPU; nothing is downloaded.   python -m pytest -q test_losses.py test_all.py test_trl.py"""
import collections
import copy
import hashlib
import dataclasses
import itertools
import json
import math
import os
import random
import re
import signal
import string
import types

import pytest
import torch

import agent
import base
import bench
import chat
import compare
import config
import env_api
import opsd
import pi_distill
import probe
import rl
import toy_env
from run import Run

try:
    import gem_env
except ImportError:  # gem-llm installs on Python <= 3.12 only (requirements.txt)
    gem_env = None
needs_gem = pytest.mark.skipif(gem_env is None, reason="the gem-llm package is not installed (Python <= 3.12)")


# ----------------------------------------------------------------------------- toy_env.py: the world


@pytest.mark.parametrize("horizon", [1, 2, 3])
@pytest.mark.parametrize("split", ["train", "test"])
def test_frontier_solves_every_task(split, horizon):
    env = toy_env.ToyShopEnv(split, horizon=horizon)
    for seed in range(500):
        env.reset(seed)
        for _, action in env.demonstration():
            obs, reward, terminated, truncated, _ = env.step(action)
            assert not obs.startswith("error"), (seed, action, obs)
        assert terminated and reward == 1.0, seed


def test_tasks_are_deterministic_and_need_three_grounded_calls():
    assert toy_env.make_task(7) == toy_env.make_task(7)
    assert toy_env.make_task(7) != toy_env.make_task(8)
    env = toy_env.ToyShopEnv()
    assert env.reset(3) == env.reset(3)
    for seed in range(200):
        task = toy_env.make_task(seed)
        demo = [a for _, a in toy_env.frontier_demo(dict(task, shortcut=False))]
        assert len(demo) >= 3 and demo[:2] == [f"find_user {task['name']}", f"get_orders {task['uid']} {task['item']}"]
    a = toy_env.noisy_episode(env, 5, random.Random(1))
    assert a == toy_env.noisy_episode(env, 5, random.Random(1))


def test_horizon_1_is_the_world_before_the_horizon_knob():
    """600 seeded tasks, their prompts, PI and the frontier's episodes (every observation and reward) hash to what
    the single-request world of commit 1d46679 gave; the one rule made stricter since (a status answer counts only
    if the asked order itself was read, not any order) changes none of them."""
    digest = hashlib.sha256()
    for split in ("train", "test"):
        env = toy_env.ToyShopEnv(split)
        for seed in range(300):
            t = toy_env.make_task(seed, split)
            keys = ("split", "seed", "kind", "name", "uid", "orders", "target", "item", "status", "shortcut")
            request, info = env.reset(seed)
            digest.update(json.dumps([{k: t[k] for k in keys}, request, info,
                                      [env.privileged_info(k) for k in env_api.PI_KINDS]]).encode())
            for reasoning, action in env.demonstration():
                digest.update(json.dumps([reasoning, action, env.step(action)]).encode())
            digest.update(str(env.success()).encode())
    assert digest.hexdigest()[:16] == "76a4630c034733a3"


@pytest.mark.parametrize("horizon", [2, 3])
def test_a_longer_conversation_brings_each_request_when_the_last_is_answered(horizon):
    env = toy_env.ToyShopEnv(horizon=horizon)
    assert env.max_turns == 6 + 3 * (horizon - 1)
    for seed in range(300):
        t = toy_env.make_task(seed, horizon=horizon, shortcut_frac=0.0)
        asks = t["asks"]
        assert len(asks) == horizon and len({a["item"] for a in asks}) == horizon and len(t["orders"]) > horizon
        assert all(t["orders"][a["target"]] == (a["status"], a["item"]) for a in asks)
        assert all(a["status"] == toy_env.NEEDS[a["kind"]] for a in asks if a["kind"] in toy_env.OPS)
        demo = [a for _, a in toy_env.frontier_demo(t)]
        assert len(demo) == 1 + 2 * horizon + sum(a["kind"] in toy_env.OPS for a in asks)
        assert [a for a in demo if a.startswith("get_orders")] == [f"get_orders {t['uid']} {a['item']}" for a in asks]
        assert [a for a in demo if a.startswith("respond")] == [f"respond {toy_env.answer(a)}" for a in asks]
        env.reset(seed)
        assert env.task["asks"] == asks  # shortcut_frac draws last: the same asks
    seed = next(s for s in range(2000) if toy_env.make_task(s, horizon=horizon)["asks"][0]["kind"] == "cancel")
    t = toy_env.make_task(seed, horizon=horizon)
    first, second = t["asks"][:2]
    env.reset(seed)
    assert first["item"] in toy_env.request_text(t) and second["item"] not in toy_env.request_text(t)
    for action in [f"find_user {t['name']}", f"get_orders {t['uid']} {first['item']}", f"cancel {first['target']}"]:
        env.step(action)
    obs, reward, terminated, _, _ = env.step("respond done")
    assert obs == toy_env.request_text(t, 1) and second["item"] in obs and not terminated and reward == 0.0
    def play(actions):  # the frontier's solution with some actions replaced, dropped or moved
        env.reset(seed)
        for action in actions:
            obs, reward, terminated, truncated, _ = env.step(action)
        return reward, terminated
    demo = [a for _, a in toy_env.frontier_demo(dict(t, shortcut=False))]
    assert play(demo) == (1.0, True)
    write = demo.index(f"cancel {first['target']}")
    assert play(demo[:write] + demo[write + 1:write + 2] + [demo[write]] + demo[write + 2:])[0] == 0.0  # answered first
    assert play(demo[:write + 1] + ["respond pending"] + demo[write + 2:])[0] == 0.0  # one wrong answer


def test_the_turn_limit_grows_with_the_horizon_in_rollouts(tiny):
    cfg, model, tok = tiny
    for horizon in (1, 3):
        at = dataclasses.replace(cfg, horizon=horizon, max_action_tokens=2)
        episodes = agent.rollout(model, tok, at, [("train", s) for s in range(16)], False, torch.Generator().manual_seed(0))
        assert max(len(e.turns) for e in episodes) == at.turn_limit == 6 + 3 * (horizon - 1)


def test_splits_share_no_entities():
    def entities(split):
        out = set()
        for seed in range(500):
            t = toy_env.make_task(seed, split)
            out |= {t["name"], t["uid"], *t["orders"], *(item for _, item in t["orders"].values())}
        return out
    assert not entities("train") & entities("test")


def test_pi_kinds_render_and_removing_the_block_gives_the_student_prompt():
    env = toy_env.ToyShopEnv()
    env.reset(0)
    texts = [env.privileged_info(k) for k in env_api.PI_KINDS]
    assert all(texts) and len(set(texts)) == 3
    for pi in texts:
        teacher = toy_env.system_prompt(pi)
        assert env_api.PI_OPEN in teacher and pi in teacher
        assert teacher.replace(env_api.pi_block(pi), "") == toy_env.system_prompt()
    with pytest.raises(ValueError):
        env.privileged_info("everything")


@pytest.mark.parametrize("horizon", [1, 3])
def test_malformed_actions_never_crash_and_use_a_turn(horizon):
    rng = random.Random(0)
    shapes = ["", " ", "\n\n", "cancel", "cancel #12 #13", "get_orders", "x" * 5000, "find_user " + "a" * 300,
              "respond", "\x00\x01", "🙂 find_user", "return U37", "cancel U37", "find_user alice\n", None, 17]
    shapes += ["".join(rng.choice(string.printable) for _ in range(rng.randrange(40))) for _ in range(500)]
    env = toy_env.ToyShopEnv(horizon=horizon)
    for i, text in enumerate(shapes):
        if i % 6 == 0:
            env.reset(i)
        if env.done:
            env.reset(i)
        turn = env.turn
        obs, reward, terminated, truncated, info = env.step(text)
        assert isinstance(obs, str) and info["turn"] == turn + 1
        assert reward in (0.0, 1.0)


def test_wrong_write_gives_zero_and_turn_limit_truncates():
    env = toy_env.ToyShopEnv()
    seed = next(s for s in range(1000) if (t := toy_env.make_task(s))["kind"] == "cancel"
                and sum(st == "pending" for st, _ in t["orders"].values()) >= 2)
    env.reset(seed)
    t = env.task
    wrong = next(o for o, (st, _) in t["orders"].items() if st == "pending" and o != t["target"])
    for action in [f"find_user {t['name']}", f"get_orders {t['uid']}", f"cancel {wrong}", f"cancel {t['target']}"]:
        env.step(action)
    assert env.step("respond done")[1] == 0.0
    env.reset(0)
    for turn in range(1, env.max_turns + 1):
        obs, reward, terminated, truncated, _ = env.step("find_user nobody")
        assert truncated == (turn == env.max_turns) and not terminated and reward == 0.0
    with pytest.raises(RuntimeError):
        env.step("respond done")


def test_get_orders_filters_by_item():
    env = toy_env.ToyShopEnv()
    env.reset(0)
    t = env.task
    everything, _, _, _, _ = env.step(f"get_orders {t['uid']}")
    assert everything.count("#") == len(t["orders"])
    status, item = t["orders"][t["target"]]
    assert env.step(f"get_orders {t['uid']} {item}")[0] == f"orders {t['target']} {status} {item}"
    assert env.step(f"get_orders {t['uid']} nothing")[0] == "error : no nothing order"
    assert env.step(f"get_orders {t['uid']} {item} more")[0].startswith("error : get_orders takes")


def test_status_answer_needs_the_lookup():
    env = toy_env.ToyShopEnv()
    seed = next(s for s in range(100) if toy_env.make_task(s)["kind"] == "status")
    env.reset(seed)
    assert env.step(f"respond {env.task['status']}")[1] == 0.0  # a guess without looking is not a solution


def test_shortcut_fraction_and_unreproducible_ids():
    tasks = [toy_env.make_task(s) for s in range(3000)]
    frac = sum(t["shortcut"] for t in tasks) / len(tasks)
    assert abs(frac - 0.3) < 0.03
    for t in tasks[:300]:
        first = toy_env.frontier_demo(t)[0][1]
        if t["shortcut"]:  # the id it uses appears in nothing the agent has seen
            request = toy_env.request_text(t)
            assert first == f"get_orders {t['uid']} {t['item']}" and t["uid"] not in request + toy_env.SYSTEM_PROMPT
        else:
            assert first.startswith("find_user")
    assert all(not toy_env.make_task(s, shortcut_frac=0.0)["shortcut"] for s in range(200))


def test_behaviour_policy_is_grounded_and_rarely_succeeds():
    env, rng = toy_env.ToyShopEnv(), random.Random(0)
    for seed in range(300):
        request, history = toy_env.noisy_episode(env, seed, rng)
        seen = request
        for action, obs in history:
            assert all(arg in seen.split() + ["done", *toy_env.STATUSES] for arg in action.split()[1:]), (action, seen)
            seen += " " + obs
    assert 0.02 <= toy_env.success_rate(toy_env.noisy_episode, n=2000) <= 0.10
    assert toy_env.success_rate(toy_env.random_valid_policy, n=2000) < 0.03
    longer = [toy_env.success_rate(toy_env.noisy_episode, n=2000, horizon=h) for h in (1, 2, 3)]
    assert longer[0] > longer[1] > longer[2] and longer[2] <= 0.01  # a longer chain of decisions is rarely found


def each_request(play):
    """A policy that plays `play(env, task, ask, rng)` on the customer's current request, and again on each next
    one, until the episode ends."""
    def policy(env, seed, rng):
        env.reset(seed)
        while not env.done:
            play(env, env.task, env.task["asks"][len(env.closed)], rng)
    return policy


def lookup_then(item_filter, then):
    """Looks the user up (once), lists the orders (only the request's item, or all), then plays `then(ask, seen ids)`."""
    def play(env, t, ask, rng):
        if not env.closed:
            env.step(f"find_user {t['name']}")
        obs = env.step(f"get_orders {t['uid']}" + (f" {ask['item']}" if item_filter else ""))[0]
        for action in then(ask, [word for word in obs.split() if word.startswith("#")]):
            if env.done:
                break
            env.step(action)
    return each_request(play)


every_status = lookup_then(False, lambda ask, seen: ["respond " + " ".join(toy_env.STATUSES)])
every_write_on_every_listed_order = lookup_then(False, lambda ask, seen: [f"{op} {o}" for o in seen
                                                                         for op in toy_env.OPS] + ["respond done"])
# the right order, but no decision between cancel and return
both_tools_on_the_target = lookup_then(True, lambda ask, seen: [f"{op} {ask['target']}" for op in toy_env.OPS]
                                       + ["respond done"])
repeated_write = lookup_then(True, lambda ask, seen: [f"{ask['kind']} {ask['target']}"] * 2 + ["respond done"])


@each_request
def sprayed_ids(env, t, ask, rng):  # guessed writes with no lookup at all
    for _ in range(2):
        env.step(f"{rng.choice(toy_env.OPS)} {rng.choice(toy_env.POOLS[env.split]['oids'])}")
    if not env.done:
        env.step("respond done")


@each_request
def write_before_any_lookup(env, t, ask, rng):  # even the right id, if it was never read, is a guess
    env.step(f"{ask['kind']} {ask['target']}")
    if not env.done:
        env.step("respond done")


@each_request
def answer_at_once(env, t, ask, rng):
    env.step(f"respond {rng.choice(['done', *toy_env.STATUSES])}")


def text_after_the_answer(env, seed, rng):  # the frontier's solution, with more words in each answer
    env.reset(seed)
    for _, action in env.demonstration():
        env.step(action + (" U33 monitor" if action.startswith("respond") else ""))


def all_but_the_last_request(env, seed, rng):  # the frontier's solution until the last request, which is
    env.reset(seed)                               # answered without its write, or "done" to a status question
    for _, action in env.demonstration():
        last = len(env.closed) == env.horizon - 1
        if last and action.split()[0] in toy_env.OPS:
            continue
        env.step("respond done" if last and action.startswith("respond") else action)


@pytest.mark.parametrize("policy", [every_status, sprayed_ids, every_write_on_every_listed_order,
                                    both_tools_on_the_target, repeated_write, write_before_any_lookup,
                                    answer_at_once, text_after_the_answer, all_but_the_last_request])
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("horizon", [1, 3])
def test_degenerate_policies_win_nothing(policy, split, horizon):
    """A search for reward without a solution: each of these wins no task of 1,000."""
    assert toy_env.success_rate(policy, split, n=1000, horizon=horizon) == 0.0


@pytest.mark.parametrize("horizon", [2, 3])
def test_a_conversation_rewards_only_each_request_solved_in_its_turn(horizon):
    """The frontier's solution, changed in one way each: a write dropped, a later request's write made ahead (its
    id read in a full listing first, so only the order of the writes is wrong), two requests' answers swapped, or
    one request's write repeated. Each earns nothing on every task where the change changes the actions."""
    env, tried = toy_env.ToyShopEnv(horizon=horizon), collections.Counter()
    def reward(actions):
        env.reset(seed)
        for action in actions:
            if env.done:
                return -1.0  # an action after the last answer: not a conversation this test means to play
            reward = env.step(action)[1]
        return reward
    for seed in range(600):
        t = env.reset(seed)[0] and env.task
        demo = [a for _, a in env.demonstration()]
        assert reward(demo) == 1.0
        writes = [i for i, a in enumerate(demo) if a.split()[0] in toy_env.OPS]
        answers = [i for i, a in enumerate(demo) if a.startswith("respond")]
        variants = {"dropped": [demo[:i] + demo[i + 1:] for i in writes],
                    "repeated": [demo[:i + 1] + [demo[i]] + demo[i + 1:] for i in writes]}
        ahead = [i for i in writes if i > answers[0]]  # a later request's write, made during the first request
        variants["ahead"] = [[*demo[:answers[0]], f"get_orders {t['uid']}", demo[i], *demo[answers[0]:i], *demo[i + 1:]]
                             for i in ahead]
        variants["swapped answers"] = [
            [demo[answers[b]] if k == answers[a] else demo[answers[a]] if k == answers[b] else x for k, x in enumerate(demo)]
            for a, b in itertools.combinations(range(horizon), 2) if demo[answers[a]] != demo[answers[b]]]
        for change, plays in variants.items():
            for actions in plays:
                assert reward(actions) == 0.0, (change, seed, actions)
                tried[change] += 1
    assert min(tried.values()) >= 100, tried  # every kind of change was tried on many tasks


def test_a_write_changes_what_get_orders_lists():
    env = toy_env.ToyShopEnv()
    seed = next(s for s in range(100) if toy_env.make_task(s)["kind"] == "return")
    env.reset(seed)
    t = env.task
    env.step(f"find_user {t['name']}")
    assert f"{t['target']} delivered" in env.step(f"get_orders {t['uid']}")[0]
    assert env.step(f"return {t['target']}")[0] == f"ok return {t['target']}"
    assert f"{t['target']} returned" in env.step(f"get_orders {t['uid']}")[0]
    assert env.step(f"return {t['target']}")[0] == f"error : {t['target']} is returned"


# ----------------------------------------------------------------------------- config.py: flags, ranges, --help


def test_config_overrides_and_clear_errors():
    cfg = config.parse_args(config.Config, ["--lr=0.01", "--resume=true", "--pi_kind=names", "--rounds=3"])
    assert (cfg.lr, cfg.resume, cfg.pi_kind, cfg.rounds) == (0.01, True, "names", 3)
    assert config.parse_args(config.Config, ["--resume"]).resume  # a bare flag sets a boolean
    for argv, needle in [(["--lr_rate=1"], "lr_rate"), (["--rounds=ten"], "--rounds expects an int"), (["lr=1"], "--key=value"),
                         (["--resume=maybe"], "--resume"), (["--pi_kind=all"], "pi_kind"), (["--lr"], "--key=value"),
                         (["--quik"], "unknown config key 'quik'"), (["--steps=3"], "--steps is now --rounds"),
                         (["--tasks_per_step=3"], "--tasks_per_step is now --tasks_per_round"),
                         (["--horizon=2", "--env=gem:game:X"], "a setting of the toy world")]:
        with pytest.raises(SystemExit) as err:
            config.parse_args(config.Config, argv)
        assert needle in str(err.value)


BAD_FLAGS = [  # every one stops the run at parse time, naming its key
    ("--alpha=2", "alpha"), ("--alpha=-1", "alpha"), ("--group_size=1", "group_size"), ("--lr=1e3", "lr"),
    ("--temperature=-1", "temperature"), ("--beta=-5", "beta"), ("--clip_eps=-1", "clip_eps"), ("--lr=-1", "lr"),
    ("--shortcut_frac=2", "shortcut_frac"), ("--rounds=-1", "rounds"), ("--eval_tasks=-5", "eval_tasks"),
    ("--n_head=3", "n_head"), ("--group_size=0", "group_size"), ("--tasks_per_round=0", "tasks_per_round"),
    ("--eval_every=0", "eval_every"), ("--temperature=0", "temperature"), ("--eval_tasks=0", "eval_tasks"),
    ("--max_action_tokens=0", "max_action_tokens"), ("--updates_per_round=0", "updates_per_round"),
    ("--out_dir=", "out_dir"), ("--device=foo", "device"), ("--lr=nan", "lr"), ("--ratio_cap=0.5", "ratio_cap"),
    ("--env=nonsense", "env"), ("--horizon=0", "horizon"), ("--horizon=4", "horizon"), ("--seed=4294967296", "seed")]


@pytest.mark.parametrize("flag,key", BAD_FLAGS)
def test_bad_flags_stop_at_parse_time_naming_the_key(flag, key):
    with pytest.raises(SystemExit) as err:
        config.parse_args(pi_distill.PiDistillConfig, [flag])
    assert str(err.value).startswith(f"--{key}=") or f" {key}=" in str(err.value), err.value


@pytest.mark.parametrize("flag,key", [("--ema_decay=2", "ema_decay"), ("--teacher=frozn", "teacher"),
                                      ("--kl_estimator=analytik", "kl_estimator")])
def test_bad_opsd_flags_and_configs_built_in_python(flag, key):
    with pytest.raises(SystemExit, match=f"--{key}="):
        config.parse_args(opsd.OPSDConfig, [flag])
    name, value = flag[2:].split("=")
    with pytest.raises(config.ConfigError, match=key):  # a config built in Python (compare.py, a notebook) too
        opsd.OPSDConfig(**{name: float(value) if key == "ema_decay" else value})
    with pytest.raises(config.ConfigError, match="alpha"):
        dataclasses.replace(pi_distill.PiDistillConfig(), alpha=1.5)
    with pytest.raises(SystemExit, match="needs alpha=0"):  # nothing would train the sampler's PI view
        config.parse_args(pi_distill.PiDistillConfig, ["--teacher=frozen", "--alpha=0.5"])


def test_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as err:
        config.parse_args(pi_distill.PiDistillConfig, ["--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(pi_distill.PiDistillConfig):
        assert f"--{f.name}={f.default!r}" in out, f.name
    assert "[0, 1]" in out and "weight α of the teacher term" in out


def test_unavailable_device_and_missing_model_are_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device=cuda: CUDA is not available"):
        agent.pick_device("cuda")
    with pytest.raises(SystemExit, match="no such folder"):
        base.load_base(config.Config(model="/no/such/path"), torch.device("cpu"))
    with pytest.raises(SystemExit, match="--model=nobody/no-such-model: "):  # offline here: at once, no retry loop
        base.load_base(config.Config(model="nobody/no-such-model"), torch.device("cpu"))


# ------------------------------------------------ agent.py, base.py: tokenizer, rollouts, two views, the base

TINY = dict(n_layer=1, n_embd=32, n_head=2, warmup_steps=4, warmup_batch=8, warmup_eval_every=4,
            eval_tasks=16, tasks_per_round=2, group_size=4, eval_every=2, rounds=2)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny base model (4 warm-up steps), its tokenizer and config, cached in a temporary directory."""
    cfg = config.Config(**TINY, cache_dir=str(tmp_path_factory.mktemp("cache")))
    model, tok = base.load_base(cfg, torch.device("cpu"))
    return cfg, model, tok


def test_tokenizer_round_trips_and_ids_are_single_tokens(tiny):
    _, _, tok = tiny
    for text in base.environment_texts(n_tasks=100):
        assert tok.decode(tok.encode(text)) == text
    for pool in toy_env.POOLS.values():
        for word in pool["uids"] + pool["oids"] + pool["names"] + pool["items"]:
            assert len(tok.encode(" " + word)) == 1, word
    assert len(tok.encode("find_user")) == len(tok.encode(env_api.step_label(1))) == 1


def test_rollout_mask_covers_only_model_tokens(tiny):
    """Walk each continuation: turn header (mask 0), the model's tokens (mask 1, ending at its <|end|> or cut at
    max_action_tokens and closed by an unmasked <|end|>), then the tool's observation and next header (mask 0).
    The prompt and PI block are not in the continuation at all."""
    cfg, model, tok = tiny
    episodes = agent.rollout(model, tok, cfg, [("train", s) for s in range(16)], True, torch.Generator().manual_seed(0))
    for e in episodes:
        assert len(e.tokens) == len(e.mask) == len(e.logp)
        header = tok.turn_header(1)
        assert e.tokens[:len(header)] == header and not any(e.mask[:len(header)])
        pos = len(header)
        for k, (text, obs) in enumerate(e.turns):
            start = pos
            while pos < len(e.tokens) and e.mask[pos] == 1:
                pos += 1
                if e.tokens[pos - 1] == tok.end:
                    break
            assert 1 <= pos - start <= cfg.max_action_tokens and tok.decode(e.tokens[start:pos]) == text
            if e.tokens[pos - 1] != tok.end:  # cut: the turn is closed for the model, unmasked
                assert e.tokens[pos] == tok.end and e.mask[pos] == 0
                pos += 1
            if k < len(e.turns) - 1:
                after = tok.observation(obs, k + 2)
                assert e.tokens[pos:pos + len(after)] == after and not any(e.mask[pos:pos + len(after)])
                pos += len(after)
        assert pos == len(e.tokens)
        assert all(lp == 0.0 for lp, m in zip(e.logp, e.mask) if not m) and all(lp < 0 for lp, m in zip(e.logp, e.mask) if m)


def test_two_views_align_with_behaviour_log_probs(tiny):
    """Scoring the same episodes under either prompt reads the continuation tokens at the same positions:
    the log-probs recomputed in the view that sampled them equal the rollout's behaviour log-probs."""
    cfg, model, tok = tiny
    for with_pi in (True, False):
        episodes = agent.rollout(model, tok, cfg, [("train", s) for s in range(8)], with_pi, torch.Generator().manual_seed(1))
        _, mask, logp_behaviour = agent.batch_continuations(episodes, "cpu")
        with torch.no_grad():
            _, logp = agent.score(model, tok, episodes, "teacher" if with_pi else "student", cfg.temperature)
        assert mask.sum() > 0
        assert torch.allclose(logp * mask, logp_behaviour * mask, atol=1e-4)
        other = agent.score(model, tok, episodes, "student" if with_pi else "teacher", cfg.temperature)[1]
        assert other.shape == logp.shape  # one column per continuation token in both views


def test_same_seed_same_rollouts(tiny):
    cfg, model, tok = tiny
    run = lambda: agent.rollout(model, tok, cfg, [("test", s) for s in range(8)], False, torch.Generator().manual_seed(5))
    assert [e.tokens for e in run()] == [e.tokens for e in run()]


def test_evaluate_counts_the_first_action_as_the_model_wrote_it(tiny, monkeypatch):
    """Decoded turns keep the leading space of the action's first token (" find_user nina"): the statistic
    "looks the user up first" must still see the tool."""
    cfg, _, _ = tiny
    def fake_rollout(model, tok, cfg, tasks, with_pi, generator, pi_kind=None):
        return [agent.Episode("test", i, "", "", "", dict(shortcut=True), [], [], [],
                              [(" find_user nina" if i % 4 else " get_orders U37 lamp", "user U37")])
                for i, _ in enumerate(tasks)]
    monkeypatch.setattr(agent, "rollout", fake_rollout)
    assert agent.evaluate(None, None, cfg, n=8)["lookup_first"] == 0.75


@pytest.mark.parametrize("horizon", [1, 3])
def test_statistics_count_the_requests_of_each_kind_solved(horizon):
    """cancel / return / status: the share of requests of that kind solved when answered, found by replaying the
    episode's actions. The frontier's episodes solve every kind; answering "done" at once solves none."""
    env = toy_env.ToyShopEnv("test", horizon=horizon)
    def episodes(actions_of):
        out = []
        for seed in range(60):
            env.reset(seed)
            turns = [(f" {a}", env.step(a)[0]) for a in actions_of(env)]
            out.append(agent.Episode("test", seed, "", "", "", dict(shortcut=False), [], [], [], turns))
        return out
    frontier = env.statistics(episodes(lambda e: [a for _, a in e.demonstration()]))
    assert [frontier[k] for k in toy_env.REQUESTS] == [1.0, 1.0, 1.0]
    hasty = env.statistics(episodes(lambda e: ["respond done"] * horizon))
    assert [hasty[k] for k in toy_env.REQUESTS] == [0.0, 0.0, 0.0]
    half = env.statistics(episodes(lambda e: [a for _, a in e.demonstration()][:-1] + ["respond wrong"]))
    assert half["status"] < 1.0 and (horizon == 1 or half["cancel"] > 0.0)  # only the last request fails


def test_held_out_episodes_naming_training_pool_entities_are_counted(tiny, monkeypatch):
    """train_pool: the share of held-out episodes that write a name, item or id of the training pool (ids of
    the training pool in a test task are memorised, never read); nan on training tasks, where they belong."""
    cfg, _, _ = tiny
    actions = [" get_orders U37 lamp", " find_user nina", " respond done U21", " find_user edgar"]
    def fake_rollout(model, tok, cfg, tasks, with_pi, generator, pi_kind=None):
        return [agent.Episode(split, i, "", "", "", dict(shortcut=False), [], [], [],
                              [(actions[i % 4], "error"), (" respond done", "bye")]) for i, (split, _) in enumerate(tasks)]
    monkeypatch.setattr(agent, "rollout", fake_rollout)
    assert agent.evaluate(None, None, cfg, n=8)["train_pool"] == 0.75
    assert math.isnan(agent.evaluate(None, None, cfg, n=8, split="val")["train_pool"])


def test_warmup_cache_is_used(tiny, monkeypatch, capsys):
    cfg, model, tok = tiny
    monkeypatch.setattr(base, "warm_up", lambda *a: pytest.fail("warm-up ran although a cached base exists"))
    again, _ = base.load_base(cfg, torch.device("cpu"))
    assert "loaded" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# ----------------------------------------------------------------------------- a pretrained model's own tokenizer

@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory):
    """base.save_toy_hf_model: the path a user's --model=Qwen/... takes, without any download."""
    return base.save_toy_hf_model(str(tmp_path_factory.mktemp("hf_model")))


def test_pretrained_tokenizer_renders_the_chat_template(hf_model_dir):
    from transformers import AutoTokenizer
    tok = chat.HFChatTokenizer(AutoTokenizer.from_pretrained(hf_model_dir))
    env = toy_env.ToyShopEnv()
    request, info = env.reset(0)
    pi = env.privileged_info("calls")
    teacher, student = tok.decode(tok.prompt(info["system"], request, pi)), tok.decode(tok.prompt(info["system"], request))
    assert teacher.replace(env_api.pi_block(pi), "") == student and pi in teacher
    tokens, mask = chat.episode_tokens(tok, [("find_user alice", "user U37"), ("get_orders U37", None)])
    text = tok.hf.decode(tokens)
    assert text == ("<|im_start|>assistant\nstep1 find_user alice<|im_end|>\n<|im_start|>user\nuser U37<|im_end|>\n"
                    "<|im_start|>assistant\nstep2 get_orders U37<|im_end|>")
    assert tok.hf.decode([t for t, m in zip(tokens, mask) if m]) == " find_user alice<|im_end|> get_orders U37<|im_end|>"


@pytest.mark.parametrize("algorithm", ["pi_distill", "opsd"])
def test_one_training_step_with_a_pretrained_model(hf_model_dir, tmp_path, algorithm, monkeypatch):
    """One step of each algorithm through the --model code path (tokenizer, template, rollout, two-view scoring,
    loss, update). An untrained model never succeeds, so rewards are made random here to give the update a signal."""
    coin = random.Random(0)
    monkeypatch.setattr(toy_env.ToyShopEnv, "success", lambda self: coin.random() < 0.5)
    module = {"pi_distill": pi_distill, "opsd": opsd}[algorithm]
    cfg_class = {"pi_distill": pi_distill.PiDistillConfig, "opsd": opsd.OPSDConfig}[algorithm]
    cfg = cfg_class(model=hf_model_dir, out_dir=str(tmp_path), rounds=1, tasks_per_round=2, group_size=2,
                    eval_tasks=4, teacher="live") if algorithm == "opsd" else \
        cfg_class(model=hf_model_dir, out_dir=str(tmp_path), rounds=1, tasks_per_round=2, group_size=2, eval_tasks=4,
                  alpha_anneal_rounds=0)
    run = Run(cfg, algorithm)
    before = [p.detach().clone() for p in run.model.parameters()]
    final = module.train(cfg, run)
    assert 0.0 <= final["student"] <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))


# ----------------------------------------------------------------------------- runs: records, resume, end to end


def tiny_run_config(cls, tiny, out_dir, **kw):
    base_cfg = tiny[0]
    return cls(**(dataclasses.asdict(base_cfg) | dict(out_dir=str(out_dir), eval_every=100, eval_tasks=8) | kw))


def test_resume_gives_the_same_next_step_as_an_uninterrupted_run(tiny, tmp_path):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path / "full", rounds=2)
    full = Run(cfg, "full")
    pi_distill.train(cfg, full)
    pi_distill.train(dataclasses.replace(cfg, out_dir=str(tmp_path / "part"), rounds=1))
    resumed_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "part"), rounds=2, resume=True)
    resumed = Run(resumed_cfg, "resumed")
    pi_distill.train(resumed_cfg, resumed)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    def training_records(run_dir):  # the interrupted run also evaluated at its end: compare the steps themselves
        records = [json.loads(line) for line in open(tmp_path / run_dir / "metrics.jsonl")]
        return [{k: v for k, v in r.items() if k != "time"} for r in records if not r.get("eval")]
    assert training_records("part") == training_records("full") and len(training_records("full")) == 2
    assert (tmp_path / "full" / "curves.png").stat().st_size > 0 and (tmp_path / "full" / "config.json").exists()


def test_missing_or_mismatched_checkpoint_is_a_clear_error(tiny, tmp_path):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path, rounds=1, resume=True)
    with pytest.raises(SystemExit, match="no checkpoint"):
        pi_distill.train(cfg)
    pi_distill.train(dataclasses.replace(cfg, resume=False))
    with pytest.raises(SystemExit, match="alpha"):
        pi_distill.train(dataclasses.replace(cfg, alpha=0.9))


def test_refused_resume_changes_nothing_and_starts_no_warm_up(tiny, tmp_path, monkeypatch):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path, rounds=1)
    pi_distill.train(cfg)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(base, "load_base", lambda *a: pytest.fail("the base was loaded before the refusal"))
    with pytest.raises(SystemExit, match="n_layer"):
        Run(dataclasses.replace(cfg, resume=True, n_layer=2), "x")
    opsd_cfg = opsd.OPSDConfig(**{k: v for k, v in dataclasses.asdict(cfg).items()
                                  if k in {f.name for f in dataclasses.fields(opsd.OPSDConfig)}} | dict(resume=True))
    with pytest.raises(SystemExit, match="PiDistillConfig"):  # a π-Distill checkpoint resumed by opsd.py
        Run(opsd_cfg, "x")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_corrupt_checkpoint_or_cached_base_is_named(tiny, tmp_path, damage):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path / "run", rounds=1)
    pi_distill.train(cfg)
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = base.base_cache_path(dataclasses.replace(cfg, cache_dir=str(cache)))
    ckpt = tmp_path / "run" / "ckpt.pt"
    for path in (ckpt, cached):
        original = open(base.base_cache_path(cfg), "rb").read() if path == cached else ckpt.read_bytes()
        data = {"truncated": original[:len(original) // 2], "garbage": b"not a torch file"}.get(damage)
        if data is None:
            torch.save({"weights": torch.zeros(2)}, path)
        else:
            open(path, "wb").write(data)
    with pytest.raises(SystemExit, match=f"{ckpt}: .*another --out_dir"):
        Run(dataclasses.replace(cfg, resume=True), "x")
    with pytest.raises(SystemExit, match=f"{cached}: .*delete it to rebuild"):
        base.load_base(dataclasses.replace(cfg, cache_dir=str(cache)), torch.device("cpu"))


def test_a_checkpoint_cannot_run_code(tiny, tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path, rounds=1, resume=True)
    torch.save({"model": Payload()}, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit, match="cannot read this checkpoint"):
        Run(cfg, "x")
    assert not (tmp_path / "pwned").exists()


def test_nan_guard_says_which_checkpoint_exists(tiny, tmp_path, monkeypatch):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path, rounds=1)
    monkeypatch.setattr(pi_distill, "pi_distill_loss", lambda *a, **k: (torch.tensor(float("nan")), {}))
    run = Run(cfg, "x")
    with pytest.raises(FloatingPointError, match="in round 1; no checkpoint was written yet"):
        pi_distill.train(cfg, run)
    run.save()
    with pytest.raises(FloatingPointError, match="ckpt.pt holds round 0"):
        pi_distill.train(cfg, run)


def test_a_used_out_dir_is_refused_or_moved_aside_never_replaced(tiny, tmp_path):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path / "run", rounds=1)
    pi_distill.train(cfg)
    first = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(SystemExit, match=r"holds a run \(metrics.jsonl, config.json, ckpt.pt\).*--resume=True.*--overwrite"):
        Run(cfg, "again")
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == first
    pi_distill.train(dataclasses.replace(cfg, overwrite=True))
    assert (tmp_path / "run.old-1" / "metrics.jsonl").read_bytes() == first and (tmp_path / "run" / "ckpt.pt").exists()
    with pytest.raises(SystemExit, match="cannot write there"):  # a folder that cannot be made (root writes anywhere)
        Run(dataclasses.replace(cfg, out_dir=str(tmp_path / "run" / "ckpt.pt" / "sub")), "x")


def test_resume_takes_the_folder_however_written_and_refuses_fewer_rounds(tiny, tmp_path, capsys):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path / "run", rounds=2, eval_every=1)
    pi_distill.train(cfg)
    for name in (str((tmp_path / "run").resolve()) + "/", "./" + os.path.relpath(tmp_path / "run")):
        Run(dataclasses.replace(cfg, out_dir=name, resume=True, base_stats=True), "x")  # accepted
    with pytest.raises(SystemExit, match="holds round 2, past --rounds=1"):
        Run(dataclasses.replace(cfg, resume=True, rounds=1), "x")
    metrics = tmp_path / "run" / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"round": 3, "ev')  # a kill while a line was written
    pi_distill.train(dataclasses.replace(cfg, resume=True, rounds=3))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["round"] for r in records if not r.get("eval")] == [1, 2, 3]
    metrics.unlink()
    capsys.readouterr()
    pi_distill.train(dataclasses.replace(cfg, resume=True, rounds=4))
    out = capsys.readouterr().out
    assert "holds no evaluation before round 3" in out and "(from round 4, the first evaluation" in out
    metrics.write_text('{"round": 1}\nnot json\n{"round": 2}\n')
    with pytest.raises(SystemExit, match="line 2 is not JSON"):
        pi_distill.train(dataclasses.replace(cfg, resume=True, rounds=5))


def test_ctrl_c_stops_with_one_line_naming_the_checkpoint(tiny, tmp_path):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path, rounds=1)
    before = signal.getsignal(signal.SIGINT)
    run = Run(cfg, "x")
    run.start()
    assert signal.getsignal(signal.SIGINT) == run.interrupted
    with pytest.raises(SystemExit, match="stopped by Ctrl-C during round 1; no checkpoint was written yet"):
        run.interrupted(signal.SIGINT, None)
    run.save()
    with pytest.raises(SystemExit, match=f"{tmp_path}/ckpt.pt holds round 0: continue with --resume=True"):
        run.interrupted(signal.SIGINT, None)
    pi_distill.train(cfg, run)
    assert signal.getsignal(signal.SIGINT) == before  # given back when the run ends


class EndlessEnv:
    """A user's environment that never ends an episode (and pays nothing)."""
    def __init__(self, split, cfg):
        self.split = split
    def reset(self, seed):
        return "say something", dict(system="you talk")
    def privileged_info(self, kind):
        return "step1 hello"
    def step(self, text):
        return "go on", 0.0, False, False, {}


class MalformedEnv(EndlessEnv):
    def __init__(self, split, cfg, broken):
        super().__init__(split, cfg)
        self.broken = broken
    def reset(self, seed):
        return "say something" if self.broken == "reset" else super().reset(seed)
    def privileged_info(self, kind):
        return None if self.broken == "privileged_info" else super().privileged_info(kind)
    def step(self, text):
        return ("bye", 5.0, True, False, {}) if self.broken == "step" else super().step(text)


def broken_reset(split, cfg):  # --env=test_all:broken_reset, ...
    return MalformedEnv(split, cfg, "reset")


def broken_privileged_info(split, cfg):
    return MalformedEnv(split, cfg, "privileged_info")


def broken_step(split, cfg):
    return MalformedEnv(split, cfg, "step")


def test_an_endless_environment_is_cut_at_max_turns(hf_model_dir, capsys):
    cfg = config.parse_args(config.Config, ["--env=test_all:EndlessEnv", f"--model={hf_model_dir}", "--max_turns=3"])
    model, tok = base.load_base(cfg, torch.device("cpu"))
    episodes = agent.rollout(model, tok, cfg, [("train", 0), ("train", 1)], False, torch.Generator().manual_seed(0))
    assert [len(e.turns) for e in episodes] == [3, 3]
    assert capsys.readouterr().out.count("cut at --max_turns=3") == 1


@pytest.mark.parametrize("broken", ["reset", "privileged_info", "step"])
def test_a_malformed_environment_is_refused_naming_the_method(hf_model_dir, broken, monkeypatch):
    argv = [f"--env=test_all:broken_{broken}", f"--model={hf_model_dir}"]
    cfg = config.parse_args(config.Config, argv)
    if broken != "step":  # checked when the run starts, before any model loads
        monkeypatch.setattr(base, "load_base", lambda *a: pytest.fail("the model was loaded before the check"))
        with pytest.raises(SystemExit, match=f"MalformedEnv.{broken}"):
            Run(cfg, "x")
        return
    model, tok = base.load_base(cfg, torch.device("cpu"))
    with pytest.raises(SystemExit, match=r"MalformedEnv.step\(text\) must return .*reward in \[0, 1\].*5\.0"):
        agent.rollout(model, tok, cfg, [("train", 0)], False, torch.Generator().manual_seed(0))


class RaisingEnv(EndlessEnv):
    def __init__(self, split, cfg, where):
        if where == "factory":
            raise RuntimeError("the database is down")
        super().__init__(split, cfg)
        self.where = where
    def reset(self, seed):
        if self.where == "reset":
            raise KeyError("no such task")
        return super().reset(seed)


class NoPIEnv:
    def __init__(self, split, cfg):
        pass
    def reset(self, seed):
        return "hi", dict(system="you talk")


@pytest.mark.parametrize("env,needle", [
    ("test_all:raising_factory", r"--env: test_all.raising_factory\('train', cfg\) raised RuntimeError"),
    ("test_all:raising_reset", r"--env: RaisingEnv.reset\(0\) raised KeyError"),
    ("test_all:NoPIEnv", r"NoPIEnv has no method privileged_info\(\)"),
    ("test_all:EndlessEnv_with_a_typo", "cannot import EndlessEnv_with_a_typo from test_all"),
    ("env_with_a_syntax_error:make", r"env_with_a_syntax_error.py, line 1: "),
    ("no_such_module_here:make", "cannot import no_such_module_here")])
def test_a_users_failing_environment_shows_its_traceback_under_one_line(env, needle, tmp_path, monkeypatch, capsys):
    (tmp_path / "env_with_a_syntax_error.py").write_text("def make(split, cfg) return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config.parse_args(config.Config, [f"--env={env}", "--model=unused", f"--out_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit, match=needle):
        Run(cfg, "x")
    if "raised" in needle:  # the user's own exception stays visible
        assert ("the database is down" if "factory" in env else "no such task") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="env=':make': allowed"):
        config.parse_args(config.Config, ["--env=:make"])


def raising_factory(split, cfg):
    return RaisingEnv(split, cfg, "factory")


def raising_reset(split, cfg):
    return RaisingEnv(split, cfg, "reset")


def test_an_evaluation_without_environment_statistics_prints_none(capsys):
    Run.print_eval(types.SimpleNamespace(round=3), dict(student=0.5, val=0.4, teacher=0.75, kl_token=0.1))
    assert capsys.readouterr().out.startswith("eval round    3 | student 0.500 | val 0.400 | teacher 0.750 | KL")


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(SystemExit, match="holds no Hugging Face model"):
        base.load_pretrained(str(tmp_path), torch.device("cpu"))


def test_opsd_steps_move_the_student_toward_a_frozen_teacher(tmp_path):
    """On the shipped base, with β large enough that the KL term leads: KL(π_S ‖ π_T) on fixed student
    episodes must fall within a few OPSD steps."""
    cfg = opsd.OPSDConfig(out_dir=str(tmp_path), lr=1e-3, beta=5.0, teacher="frozen", tasks_per_round=4, rounds=6,
                          base_stats=False, eval_tasks=8)
    run = Run(cfg, "opsd")
    teacher = copy.deepcopy(run.model)  # what the frozen teacher is: the base
    episodes = agent.rollout(run.model, run.tok, cfg, [("train", s) for s in range(64)], False, torch.Generator().manual_seed(0))
    _, mask, _ = agent.batch_continuations(episodes, "cpu")
    def kl():
        with torch.no_grad():
            return rl.kl_per_episode(agent.score(run.model, run.tok, episodes, "student", cfg.temperature)[0],
                                     agent.score(teacher, run.tok, episodes, "teacher", cfg.temperature)[0],
                                     mask).mean().item()
    before = kl()
    opsd.train(cfg, run)
    assert kl() < 0.7 * before
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), run.teacher.state_dict().values()))


class ShiftedTokenModel(torch.nn.Module):
    """A stand-in LM whose logits at position t point at the input token at t + shift (shift = 1: it knows
    the next token; shift = 0: it repeats the current one)."""

    def __init__(self, vocab_size, shift):
        super().__init__()
        self.vocab_size, self.shift, self.unused = vocab_size, shift, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kw):
        target = torch.roll(input_ids, -self.shift, dims=1)
        return type("Output", (), dict(logits=30.0 * torch.nn.functional.one_hot(target, self.vocab_size).float()))


def test_order_id_probe_reads_the_position_of_the_frontiers_id(tiny):
    """A model that knows the next token puts all its mass on the target (so on the listed ids); one that
    repeats the current token (the tool name) puts none there: the probe reads exactly the id's position."""
    cfg, _, tok = tiny
    assert bench.order_id_probe(ShiftedTokenModel(tok.vocab_size, 1), tok, cfg, 40) == pytest.approx((1.0, 1.0))
    assert bench.order_id_probe(ShiftedTokenModel(tok.vocab_size, 0), tok, cfg, 40) == pytest.approx((0.0, 0.0), abs=1e-6)


E2E_ROUNDS, E2E_MARGIN = 40, 0.05  # measured: 6.3% -> 15.3% on 300 validation tasks (two threads; 11.3% at 20)


def test_pi_distill_steps_raise_student_success(tmp_path):
    """End to end on the shipped base model (cache/): a few seeded π-Distill rounds lift the student's (no PI)
    success on validation train tasks."""
    cfg = pi_distill.PiDistillConfig(out_dir=str(tmp_path), rounds=E2E_ROUNDS, eval_every=E2E_ROUNDS, eval_tasks=8,
                                     base_stats=False, lr_schedule="constant")  # a few rounds: the full rate for all
    run = Run(cfg, "e2e")
    def student():
        return agent.evaluate(run.model, run.tok, cfg, "student", n=300, split="val")["success"]
    before = student()
    pi_distill.train(cfg, run)
    assert student() >= before + E2E_MARGIN


# ----------------------------------------------------------------------------- beyond the toy: GEM, your env, memory
# The GEM adapter run for real (gem-llm's offline games download nothing), the --env=module:factory example from the
# README, a Qwen3-style chat template, and micro-batches + gradient checkpointing giving the full batch's gradient.

GEM_GAMES = ["game:TowerofHanoi-v0-easy", "game:GuessTheNumber-v0-hard", "game:Mastermind-v0-hard"]


@needs_gem
@pytest.mark.parametrize("env_id", GEM_GAMES)
def test_gem_solver_following_the_pi_succeeds(env_id):
    """The solver's actions are the calls PI, one numbered step per turn; playing them solves every task, reward 1
    at the last step only."""
    for split in ("train", "test"):
        env = gem_env.GemEnv(env_id, split)
        for seed in range(5):
            request, info = env.reset(seed)
            assert request and info["system"] == gem_env.SYSTEM_PROMPT
            actions = [a for _, a in env.demonstration()]
            assert env.privileged_info("calls").splitlines() == [f"step{k} {a}" for k, a in enumerate(actions, 1)]
            for k, action in enumerate(actions, 1):
                obs, reward, terminated, truncated, _ = env.step(action)
                assert reward == float(k == len(actions)) and terminated == (k == len(actions)) and not truncated
            assert "Congratulations" in obs
            with pytest.raises(RuntimeError):
                env.step(actions[0])


@needs_gem
def test_gem_wrong_or_malformed_moves_fail():
    for env_id in GEM_GAMES:  # nothing the model writes crashes the adapter
        env = gem_env.GemEnv(env_id)
        for seed, text in enumerate(["", "\\boxed{}", "\\boxed{" + "9" * 5000 + "}", "\x00🙂", None, "\\boxed{A"]):
            env.reset(seed)
            obs, reward, *_ = env.step(text)
            assert isinstance(obs, str) and reward == 0.0
    hanoi = gem_env.GemEnv("game:TowerofHanoi-v0-easy")
    hanoi.reset(0)
    assert hanoi.step("\\boxed{A C}")[1:4] == (0.0, False, False)
    obs, reward, terminated, _, _ = hanoi.step("\\boxed{A C}")  # disk 2 onto disk 1: refused, the game goes on
    assert "larger" in obs and reward == 0.0 and not terminated
    for _ in range(8):  # the remaining turns without solving it: truncated, and GEM's partial credit is not a success
        obs, reward, terminated, truncated, _ = hanoi.step("\\boxed{C B}" if "C: [1]" in obs else "\\boxed{B C}")
    assert truncated and reward == 0.0
    hanoi.reset(0)
    assert hanoi.step("move the small disk")[1:3] == (0.0, True)  # GEM ends the game at an unparsable action
    guess = gem_env.GemEnv("game:GuessTheNumber-v0-easy")
    guess.reset(3)
    wrong = [n for n in range(1, 11) if n != guess.gem.game_number]
    results = [guess.step(f"\\boxed{{{n}}}") for n in wrong[:4]]
    assert [r[1] for r in results] == [0.0] * 4 and results[-1][3]  # four wrong guesses: out of turns, reward 0


@needs_gem
def test_gem_pi_kinds_decrease_in_information():
    env = gem_env.GemEnv("game:Mastermind-v0-hard")
    env.reset(7)
    code = env.gem.game_code
    calls, names, hint = (env.privileged_info(k) for k in env_api.PI_KINDS)
    assert calls == "step1 \\boxed{" + " ".join(map(str, code)) + "}"
    assert names.split()[-4:] == [str(d) for d in sorted(code)] and hint.endswith(str(code[0]))
    env = gem_env.GemEnv("game:TowerofHanoi-v0-easy")
    env.reset(0)
    assert [line.split()[-1] for line in env.privileged_info("names").splitlines()] == list("1213121")
    assert "A -> C -> B" in env.privileged_info("hint")
    with pytest.raises(ValueError):
        env.privileged_info("everything")


@needs_gem
def test_gem_splits_use_disjoint_seeds_and_leave_the_global_rng_alone():
    def codes(split):
        env = gem_env.GemEnv("game:Mastermind-v0-hard", split)
        return [(env.reset(seed), tuple(env.gem.game_code))[1] for seed in range(20)]
    assert codes("train") == codes("train") and codes("train") != codes("test")
    random.seed(5)
    expected = random.random()
    random.seed(5)
    gem_env.GemEnv("game:GuessTheNumber-v0-hard").reset(123)
    assert random.random() == expected


@needs_gem
def test_gem_refuses_downloads_and_unknown_ids():
    for env_id, needle in [("game:Wordle-v0-easy", "nltk"), ("math:GSM8K", "Hugging Face Hub"),
                           ("game:NoSuchGame-v0", "unknown id"), ("game:Sudoku-v0-easy", "without a solver")]:
        with pytest.raises(SystemExit) as err:  # when the run builds its first environment, before any model
            agent.make_env(config.parse_args(config.Config, [f"--env=gem:{env_id}"]), "train")
        assert needle in str(err.value) and "game:TowerofHanoi-v0-easy" in str(err.value)
    with pytest.raises(SystemExit, match="--model"):  # the tiny model is warmed up on the toy world only
        base.load_base(config.Config(env="gem:game:TowerofHanoi-v0-easy"), torch.device("cpu"))


@needs_gem
@pytest.mark.parametrize("algorithm", ["pi_distill", "opsd"])
def test_one_training_step_on_a_gem_game(hf_model_dir, tmp_path, algorithm, monkeypatch):
    """One step of each algorithm on a GEM game with a pretrained-style model: the same path as
    --model=Qwen/Qwen3-0.6B --env=gem:game:GuessTheNumber-v0-easy. An untrained model never wins (and its two views
    barely differ), so wins are made random here to give the update a signal."""
    coin = random.Random(0)
    monkeypatch.setattr(gem_env, "solved", lambda game, g: coin.random() < 0.5)
    module = {"pi_distill": pi_distill, "opsd": opsd}[algorithm]
    argv = ["--env=gem:game:GuessTheNumber-v0-easy", f"--model={hf_model_dir}", f"--out_dir={tmp_path}", "--rounds=1",
            "--tasks_per_round=2", "--group_size=2", "--eval_tasks=4"]
    cfg = config.parse_args(pi_distill.PiDistillConfig if algorithm == "pi_distill" else opsd.OPSDConfig,
                           argv + (["--teacher=live"] if algorithm == "opsd" else []))
    run = Run(cfg, algorithm)
    before = [p.detach().clone() for p in run.model.parameters()]
    final = module.train(cfg, run)
    assert 0.0 <= final["student"] <= 1.0 and "student_shortcut" not in final  # toy-world statistics only
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
    episode = agent.rollout(run.model, run.tok, cfg, [("train", 0)], True, torch.Generator().manual_seed(0))[0]
    assert "Guess The Number" in episode.request and episode.pi.startswith("step1 \\boxed{")


def readme_example(first_line):
    """The code block of docs/environments.md that starts with first_line, so the documented example is the tested
    one."""
    text = open(os.path.join(os.path.dirname(__file__), "docs", "environments.md")).read()
    start = text.index("```python\n" + first_line) + len("```python\n")
    return text[start:text.index("```", start)]


def test_env_module_factory_example_from_the_docs(hf_model_dir, tmp_path, monkeypatch):
    (tmp_path / "reverse_env.py").write_text(readme_example("# reverse_env.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    # with micro-batches and checkpointing; evaluation's 6 tasks are then played 4 (one round) at a time
    cfg = config.parse_args(pi_distill.PiDistillConfig, [
        "--env=reverse_env:make", f"--model={hf_model_dir}", f"--out_dir={tmp_path / 'run'}", "--rounds=1",
        "--tasks_per_round=2", "--group_size=2", "--eval_tasks=6", "--micro_batch=2", "--grad_checkpoint=True"])
    env = agent.make_env(cfg, "test")
    request, info = env.reset(0)
    word = request.split()[1]
    assert env.privileged_info("calls") == f"step1 {word[::-1]}" and env.step(word[::-1])[1:3] == (1.0, True)
    assert 0.0 <= pi_distill.train(cfg)["student"] <= 1.0
    with pytest.raises(SystemExit, match="cannot import"):
        agent.make_env(config.parse_args(config.Config, ["--env=reverse_env:no_such_factory"]), "train")


QWEN3_STYLE = (  # Qwen3's chat template in brief: an assistant turn after the last user message shows an empty
    # <think> block, earlier ones do not, and enable_thinking=False opens each answer with an empty one
    "{% set ns = namespace(last_user=0) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and loop.index0 > ns.last_user %}<think>\n\n</think>\n\n{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def test_pretrained_tokenizer_handles_a_qwen3_style_template(hf_model_dir):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(hf_model_dir)
    hf.chat_template = QWEN3_STYLE
    tok = chat.HFChatTokenizer(hf)
    tokens, _ = chat.episode_tokens(tok, [("find_user alice", "user U37"), ("get_orders U37", None)])
    empty = "<think>\n\n</think>\n\n"
    assert tok.hf.decode(tokens) == (
        f"<|im_start|>assistant\n{empty}step1 find_user alice<|im_end|>\n<|im_start|>user\nuser U37<|im_end|>\n"
        f"<|im_start|>assistant\n{empty}step2 get_orders U37<|im_end|>")


@pytest.mark.parametrize("algorithm", ["pi_distill", "opsd"])
def test_micro_batches_and_checkpointing_give_the_full_batch_gradient(tiny, tmp_path, monkeypatch, algorithm):
    """One round back-propagated all at once, one group at a time with gradient checkpointing, and with the logits
    computed 3 positions at a time (--logit_chunk): the same episodes (the checkpointed model, in training mode,
    still samples with its KV cache), the same accumulated gradient and the same round statistics. π-Distill at
    α = 0.5 with the forward KL, so the teacher view's gradient and the KL's are in it too."""
    module = {"pi_distill": pi_distill, "opsd": opsd}[algorithm]
    extra = dict(alpha=0.5, alpha_anneal_rounds=0, forward_kl_coef=0.1) if algorithm == "pi_distill" else {}
    cfg = tiny_run_config(module.PiDistillConfig if algorithm == "pi_distill" else module.OPSDConfig, tiny,
                          tmp_path / "full", tasks_per_round=4, group_size=4, rounds=1, base_stats=False, **extra)
    chunked_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "chunks"), micro_batch=6, grad_checkpoint=True)
    def one_round(cfg):
        run = Run(cfg, "x")
        monkeypatch.setattr(run.optimizer, "step", lambda: None)  # keep the gradient, not the step
        module.train(cfg, run)
        record = [json.loads(line) for line in open(os.path.join(cfg.out_dir, "metrics.jsonl"))][1]
        return run, [p.grad.clone() for p in run.model.parameters()], {k: v for k, v in record.items() if k != "time"}
    (plain, full, stats_full), (chunked, chunks, stats_chunks) = one_round(cfg), one_round(chunked_cfg)
    _, by_logit_chunks, stats_logit_chunks = one_round(dataclasses.replace(cfg, out_dir=str(tmp_path / "logits"),
                                                                           logit_chunk=3))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(full, by_logit_chunks))
    assert all(stats_full[k] == pytest.approx(stats_logit_chunks[k], rel=1e-4, nan_ok=True) for k in stats_full)
    tasks = [("train", s) for s in range(4) for _ in range(4)]
    episodes = agent.rollout(plain.model, plain.tok, cfg, tasks, True, torch.Generator().manual_seed(0))
    again = agent.rollout(chunked.model, chunked.tok, cfg, tasks, True, torch.Generator().manual_seed(0))
    assert [e.tokens for e in episodes] == [e.tokens for e in again] and chunked.model.training
    assert [len(b) for b in agent.micro_batches(episodes, chunked_cfg)] == [4] * 4  # 6 rounds down to whole groups
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(full, chunks))
    assert max(g.abs().max() for g in full) > 0
    assert stats_full.keys() == stats_chunks.keys() and stats_full["groups"] > 0
    assert all(stats_full[k] == pytest.approx(stats_chunks[k], rel=1e-4, nan_ok=True) for k in stats_full)


@pytest.mark.parametrize("kl,teacher_grad", [("T||S", True), ("S||T", False), (None, False)])
def test_two_view_scores_in_chunks_equal_the_whole_vocabulary_at_once(hf_model_dir, tiny, kl, teacher_grad):
    """Log-probs, entropy and the exact KL from the last hidden states, a few positions at a time, equal the full
    [B, L, V] computation in value and in gradient, on the tiny model and on a Hugging Face model (its own head)."""
    hf_cfg = config.parse_args(config.Config, [f"--model={hf_model_dir}", "--env=test_all:EndlessEnv"])
    hf_model, hf_tok = base.load_base(hf_cfg, torch.device("cpu"))
    cfg, model, tok = tiny
    toy_episodes = agent.rollout(model, tok, cfg, [("train", s) for s in range(4)], True, torch.Generator().manual_seed(1))
    for net, tk, episodes in [(model, tok, toy_episodes),
                              (hf_model, hf_tok, agent.rollout(hf_model, hf_tok, hf_cfg, [("train", 0), ("train", 1)],
                                                               True, torch.Generator().manual_seed(1)))]:
        teacher = copy.deepcopy(net)
        results = []
        for chunk in (0, 3):
            net.zero_grad(set_to_none=True)
            teacher.zero_grad(set_to_none=True)
            out = agent.two_view_scores(net, teacher, tk, episodes, 0.75, kl=kl, chunk=chunk, teacher_grad=teacher_grad)
            weights = torch.linspace(0.5, 1.5, out["logp_S"].numel()).view_as(out["logp_S"])
            loss = (out["logp_S"] * weights).sum() + (out["kl"] * weights).sum() if kl else (out["logp_S"] * weights).sum()
            if teacher_grad:
                loss = loss + (out["logp_T"] * weights.flip(1)).sum()
            loss.backward()
            grads = [p.grad.clone() for p in net.parameters()]
            teacher_grads = [p.grad for p in teacher.parameters()]
            results.append((out, grads, teacher_grads))
        (full, grads_full, t_full), (chunked, grads_chunked, t_chunked) = results
        for key in ("logp_S", "logp_T", "entropy_S") + (("kl",) if kl else ()):
            torch.testing.assert_close(chunked[key], full[key], rtol=1e-5, atol=1e-5)
        def close(a, b):  # to float rounding, relative to the tensor's own scale (sums over a vocabulary reorder)
            return (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-8
        assert all(close(a, b) for a, b in zip(grads_chunked, grads_full))
        assert max(g.abs().max() for g in grads_full) > 0
        if teacher_grad:
            assert all(close(a, b) for a, b in zip(t_chunked, t_full) if b is not None)
            assert any(g is not None and g.abs().max() > 0 for g in t_full)
        else:
            assert all(g is None for g in t_full + t_chunked)  # sg π_T: nothing reaches the teacher


@pytest.mark.parametrize("horizon", [1, 3])
def test_probe_finds_each_requests_decision(tiny, horizon):
    """probe.decisions: in the frontier's episodes, one decision per request, in order -- the write of a cancel or a
    return, the answer of a status request -- at the first token of that action."""
    cfg, _, tok = tiny
    probe_cfg = probe.ProbeConfig(**dataclasses.asdict(cfg) | dict(horizon=horizon))
    env = toy_env.ToyShopEnv("train", horizon=horizon)
    for seed in range(30):
        env.reset(seed)
        turns = [(a, env.step(a)[0]) for _, a in env.demonstration()]
        tokens, mask = chat.episode_tokens(tok, turns[:-1] + [(turns[-1][0], None)])
        episode = agent.Episode("train", seed, "", "", "", {}, tokens, mask, [0.0] * len(tokens),
                                [(" " + a, obs) for a, obs in turns])
        found = probe.decisions(episode, probe_cfg)
        asks = env.task["asks"]
        assert [kind for _, kind in found] == [a["kind"] for a in asks]
        assert [tok.decode([tokens[j]]).strip() for j, _ in found] == [
            "respond" if a["kind"] == "status" else a["kind"] for a in asks]


def test_probe_counts_every_group_and_reads_a_runs_checkpoint(tiny, tmp_path, capsys):
    cfg, model, _ = tiny
    run_cfg = tiny_run_config(opsd.OPSDConfig, tiny, tmp_path, rounds=1, base_stats=False)
    opsd.train(run_cfg)
    probe_cfg = probe.ProbeConfig(**dataclasses.asdict(cfg) | dict(ckpt=str(tmp_path / "ckpt.pt"), probe_tasks=3))
    probed, _ = probe.load(probe_cfg)
    assert any(not torch.equal(a, b) for a, b in zip(probed.state_dict().values(), model.state_dict().values()))
    signal, table, shaping = probe.probe(probe_cfg)
    for view in ("teacher", "student"):
        assert signal[view]["all"][1] == 3 and 0 <= signal[view]["all"][0] <= 3
    assert all(0 < row["pi_T"] <= 1 and 0 < row["pi_S"] <= 1 for row in table.values())
    flat_groups = 3 - signal["teacher"]["all"][0]  # the teacher's groups of equal rewards, G episodes each
    assert sum(row["n"] for row in shaping.values()) == flat_groups * probe_cfg.group_size
    if flat_groups:  # in each group KL_seq is below the group's mean on some episodes, never on all of them
        assert sum(row["favoured"] * row["n"] for row in shaping.values()) < flat_groups * probe_cfg.group_size
        assert all(row["kl_seq"] >= 0 for row in shaping.values())
    def episode(*actions):
        return agent.Episode("train", 0, "", "", "", {}, [], [], [], [(a, "ok") for a in actions])
    assert probe.repeats_a_tool(episode(" find_user ann", " get_orders U1 hat", " get_orders U1 hat"))
    assert not probe.repeats_a_tool(episode(" find_user ann", " get_orders U1 hat", " cancel #1", " respond done"))
    assert "groups whose rewards differ" in capsys.readouterr().out


def test_groups_without_reward_signal_are_dropped(tiny, tmp_path, monkeypatch):
    """A round whose groups all have identical rewards (every advantage zero, β = 0) gives the policy-gradient terms
    nothing to learn from: no loss, no gradient step. With the student's forward KL on, the round still trains on
    it alone, over every episode (it needs no reward)."""
    monkeypatch.setattr(toy_env.ToyShopEnv, "success", lambda self: False)
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path, beta=0.0, rounds=1, base_stats=False,
                          leak_penalty=0.0)
    run = Run(cfg, "no signal")
    monkeypatch.setattr(run.optimizer, "step", lambda: pytest.fail("a gradient step without signal"))
    before = [p.detach().clone() for p in run.model.parameters()]
    pi_distill.train(cfg, run)
    record = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")][1]
    assert record["groups"] == 0.0 and "loss" not in record
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
    assert rl.groups_with_signal(torch.tensor([0.5, -0.5, 0.0, 0.0]), 2).tolist() == [True, True, False, False]

    kl_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "kl"), forward_kl_coef=0.25)
    kl_run = Run(kl_cfg, "forward KL")
    pi_distill.train(kl_cfg, kl_run)
    record = [json.loads(line) for line in open(tmp_path / "kl" / "metrics.jsonl")][1]
    assert record["groups"] == 0.0 and "loss" not in record and record["forward_kl"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, kl_run.model.parameters()))


@pytest.mark.parametrize("drop_flat_rewards", [False, True])
def test_flat_reward_groups_train_on_kl_differences_unless_dropped(tiny, tmp_path, monkeypatch, drop_flat_rewards):
    """With β > 0 and every reward 0, the shaped advantages are −β·KL differences: the paper's rule keeps those
    groups (a gradient step on the KL alone); --drop_flat_rewards drops them."""
    monkeypatch.setattr(toy_env.ToyShopEnv, "success", lambda self: False)
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path, beta=0.25, rounds=1, base_stats=False,
                          leak_penalty=0.0, drop_flat_rewards=drop_flat_rewards)
    run = Run(cfg, "flat rewards")
    steps = []
    monkeypatch.setattr(run.optimizer, "step", lambda: steps.append(1))
    pi_distill.train(cfg, run)
    assert len(steps) == (0 if drop_flat_rewards else cfg.updates_per_round)


def test_pi_distill_with_a_frozen_teacher_samples_from_it_and_never_changes_it(tiny, tmp_path, monkeypatch):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path, teacher="frozen", rounds=2, base_stats=False)
    run = Run(cfg, "frozen teacher")
    samplers = []
    rollout = agent.rollout
    def spy(model, tok, cfg, tasks, with_pi, *a, **k):
        if tasks[0][0] == "train" and with_pi:  # a round's samples (evaluations: test tasks, or val ones without PI)
            samplers.append(model)
        return rollout(model, tok, cfg, tasks, with_pi, *a, **k)
    monkeypatch.setattr(agent, "rollout", spy)
    base_weights = copy.deepcopy(run.model.state_dict())
    pi_distill.train(cfg, run)
    assert run.teacher is not run.model and samplers == [run.teacher] * 2  # both rounds sampled from the copy
    assert all(torch.equal(p, base_weights[n]) for n, p in run.teacher.state_dict().items())
    assert any(not torch.equal(p, base_weights[n]) for n, p in run.model.state_dict().items())  # the student trained


# ----------------------------------------------------------------------------- compare.py: the baselines and the table


def test_sft_examples_are_the_frontier_trace_with_or_without_its_reasoning():
    tok = base.load_base(config.Config(), torch.device("cpu"))[1]
    env = toy_env.ToyShopEnv("train")
    for seed in range(20):
        env.reset(seed)
        demo = env.demonstration()
        for cot in (False, True):
            tokens, mask = compare.frontier_example(tok, env, seed, cot)
            written = tok.decode([t for t, m in zip(tokens, mask) if m])
            assert all(action in written and (reasoning in written) == cot for reasoning, action in demo)
            assert env_api.PI_OPEN not in tok.decode(tokens)  # the student's view: no PI block


def test_compare_runs_every_method_on_one_budget_and_never_redoes_a_run(tmp_path, monkeypatch):
    argv = ["--rounds=1", "--workers=1", "--eval_tasks=8", "--sft_steps=2", "--sft_eval_every=1", "--sft_batch=4",
            f"--out_dir={tmp_path}", "--quick"]
    compare.main(argv)
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {m} |" in table for m in compare.METHODS) and all(f"| {k} |" in table for k in env_api.PI_KINDS)
    assert all(f"| {b} |" in table for b in compare.BETAS) and "SFT w/ CoT (checkpoint by validation)" in table
    results = [json.loads(path.read_text()) for path in (tmp_path / "horizon").glob("*/result.json")]
    assert len(results) == len(compare.METHODS) + 2 * len(compare.PI_METHODS) + len(compare.BETAS) - 1
    assert {r["curve"][-1][0] for r in results} == {1 * 8 * 8}  # every method sampled the same episodes
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "kl_vs_success.png").stat().st_size > 0
    assert all(r["ood"].keys() == {"2", "3"} for r in results)  # the same runs as the horizon sweep's at horizon 1
    execute = compare.execute
    monkeypatch.setattr(compare, "execute", lambda *args: pytest.fail("a finished run was redone"))
    compare.main(argv)
    assert (tmp_path / "results.md").read_text() == table
    started = []  # --methods: only those methods' runs (with their PI kinds) are made; the table holds what finished
    monkeypatch.setattr(compare, "execute", lambda job, threads: started.append(job["method"]) or execute(job, threads))
    compare.main(argv + ["--methods=opsd", "--seed=1"])
    table = (tmp_path / "results.md").read_text()
    assert started == ["OPSD"] * len(env_api.PI_KINDS) and "| RL | – | – | – | – |" in table
    assert re.search(r"\| OPSD \| \d+\.\d \(n=1\) \|", table) and "| π-Distill α=0 | – |" in table


def test_compare_does_not_reuse_a_run_made_before_a_default_changed(tmp_path, monkeypatch):
    """A run's folder is named by what differs from the defaults, so a changed default leaves the name as it was: a
    finished run made under another default (here β = 0.1 then, 0.25 now) is not reused, it is moved aside (kept)
    and the job runs anew."""
    cfg = compare.CompareConfig(out_dir=str(tmp_path), horizons="1", seeds=1, rounds=1, workers=1)
    job = next(j for j in compare.horizon_jobs(cfg) if j["method"] == "π-Distill α=0")
    os.makedirs(job["dir"])
    def finished_run(**then):
        for name, values in (("config.json", dataclasses.asdict(pi_distill.PiDistillConfig(**job["config"] | then))),
                             ("result.json", {"final": {}})):
            with open(os.path.join(job["dir"], name), "w") as f:
                json.dump(values, f)
    finished_run()
    assert compare.cached(job) is not None and compare.stale_settings(job) == {}
    finished_run(beta=0.1)
    assert compare.stale_settings(job) == {"beta": (0.1, 0.25)} and compare.cached(job) is None
    ran = []
    monkeypatch.setattr(compare, "execute", lambda j, threads: ran.append(j["dir"]) or dict(
        final=dict(student=0.0, teacher=0.0), seconds=0.0, pi_kind="calls", horizon=1))
    compare.run_jobs(cfg, [job], lambda j: 0)
    assert ran == [job["dir"]] and json.load(open(job["dir"] + ".stale-1/config.json"))["beta"] == 0.1
    assert not os.path.exists(job["dir"])  # free for the new run (execute makes the folder)


def test_compare_jobs_keep_each_algorithms_defaults_the_users_flags_and_seeds():
    cfg = config.parse_args(compare.CompareConfig, ["--lr=1e-3", "--seed=5", "--seeds=2", "--horizons=1,3"])
    jobs = compare.horizon_jobs(cfg)
    built = [compare.ALGORITHMS[j["algorithm"]][1](**j["config"]) for j in jobs]  # what execute will run
    assert len(jobs) == 2 * 2 * len(compare.METHODS) and len({j["dir"] for j in jobs}) == len(jobs)
    assert {c.seed for c in built} == {5, 6} and {c.horizon for c in built} == {1, 3}
    assert all(c.lr == 1e-3 for c in built)  # a flag the user set reaches every method
    by_method = {j["method"]: c for j, c in zip(jobs, built)}
    assert by_method["π-Distill α=0"].lr_schedule == "cosine" and by_method["OPSD"].teacher == "frozen"
    assert by_method["RL"].beta == 0.0 and by_method["π-Distill α=1"].alpha_anneal_rounds == 0
    assert jobs[0]["ood"] == [2, 3]
    resumed = compare.horizon_jobs(config.parse_args(compare.CompareConfig, ["--lr=1e-3", "--seed=5", "--seeds=2",
                                                                            "--horizons=1,3", "--resume=True"]))
    assert [j["dir"] for j in resumed] == [j["dir"] for j in jobs]  # --resume names no other run
    assert "lr_schedule" not in jobs[0]["config"]  # a run is named by what differs from its algorithm's defaults
    for bad in ["0", "1,x", "1,1", "4"]:
        with pytest.raises(config.ConfigError, match="horizons"):
            compare.CompareConfig(horizons=bad)


def test_compare_measures_the_premise_again_when_an_episode_would_change(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(base, "load_base", lambda cfg, device: (None, None))
    monkeypatch.setattr(agent, "base_statistics", lambda model, tok, cfg: calls.append(cfg) or {"student": 0.0})
    path = str(tmp_path / "base.json")
    for flags in [{}, {}, dict(max_action_tokens=4), dict(horizon=2), dict(shortcut_frac=0.5)]:
        compare.measured_premise(compare.CompareConfig(**flags), path)
    assert len(calls) == 4  # the second call read the first's figures back; every other changed setting measured


# ----------------------------------------------------------------------------- README: where the paper is in the code


def test_the_readmes_paper_to_code_tables_name_code_that_exists():
    """Each `module.function` the tables name exists, and each `file.py `fragment`` is found in that file (the
    tables name code, not line numbers, which every edit moves)."""
    text = open(os.path.join(os.path.dirname(__file__), "README.md")).read()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line.split("|")[-2]]
    named = checked = 0
    for row in rows:
        cell = row.split("|")[-2]
        for file, fragment in re.findall(r"(\w+\.py) `([^`]+)`", cell):
            assert fragment in open(os.path.join(os.path.dirname(__file__), file)).read(), (file, fragment)
            checked += 1
        for module, name in re.findall(r"(?<![\w.])`(\w+)\.(\w+)`", cell):
            if name != "py" and module in ("agent", "rl", "pi_distill", "opsd", "run", "base", "toy_env", "env_api", "chat"):
                assert callable(getattr(__import__(module), name)), f"{module}.{name}"
                named += 1
    assert checked >= 10 and named >= 8, (checked, named)


def test_the_horizon_sweep_runs_each_job_once_reports_each_and_writes_the_table(tmp_path, monkeypatch, capsys):
    """compare.py --horizons=1,3 with each run replaced by a stand-in: the premise measured per horizon, a progress
    line per run (with the runs left), the table with per-kind and out-of-domain rows; rerun, nothing is redone."""
    monkeypatch.setattr(compare, "measured_premise", lambda cfg, path: dict(
        student=0.01 * cfg.horizon, **{k: dict(teacher=0.5, delta=0.5, kl_episode=1.0, kl_token=0.1) for k in env_api.PI_KINDS}))
    monkeypatch.setattr(agent, "print_base_statistics", lambda stats, cfg: None)
    started = []
    def fake_execute(job, threads):
        cfg = compare.ALGORITHMS[job["algorithm"]][1](**job["config"])
        started.append((job["method"], cfg.horizon))
        result = dict(method=job["method"], seed=job["seed"], pi_kind=cfg.pi_kind, horizon=cfg.horizon, curve=[],
                      final=dict(student=0.5, teacher=0.6, **{f"{v}_{k}": 0.25 for v in ("student", "teacher")
                                                              for k in toy_env.REQUESTS}),
                      sft=None, ood={str(h): 0.1 for h in job["ood"]}, seconds=1.0, resumed=False)
        os.makedirs(job["dir"], exist_ok=True)
        json.dump(result, open(os.path.join(job["dir"], "result.json"), "w"))
        with open(os.path.join(job["dir"], "metrics.jsonl"), "w") as f:  # two evaluations, for the per-kind curves
            f.writelines(json.dumps(dict(round=r, eval=True, **{f"student_{k}": 0.25 for k in toy_env.REQUESTS})) + "\n"
                         for r in (0, 1))
        return result
    monkeypatch.setattr(compare, "execute", fake_execute)
    argv = ["--horizons=1,3", "--seeds=1", "--workers=1", f"--out_dir={tmp_path}"]
    compare.main(argv)
    assert sorted(started) == sorted((m, h) for h in (1, 3) for m in compare.METHODS)
    assert started[0] == ("SFT w/o CoT + RL", 1) and started[6] == ("SFT w/ CoT + RL", 1)  # its longest run last
    out = capsys.readouterr().out
    assert "[14/14]" in out and "13 runs left" in out and "0 runs left" in out
    table = (tmp_path / "horizon.md").read_text()
    assert "| π-Distill α=0 | 50.0 (n=1) | 50.0 (n=1) |" in table and "| RL | 25 / 25 / 25 | 25 / 25 / 25 |" in table
    assert "| OPSD | 3 | 10.0 (n=1) | 50.0 (n=1) |" in table  # trained at 3: tested at 1 (out of domain), then 3
    assert (tmp_path / "horizon.png").stat().st_size > 0 and (tmp_path / "horizon_kinds.png").stat().st_size > 0
    monkeypatch.setattr(compare, "execute", lambda *a: pytest.fail("a finished run was redone"))
    compare.main(argv)
    assert (tmp_path / "horizon.md").read_text() == table
    for path in (tmp_path / "horizon").glob("*/result.json"):  # a sweep half done: --report tables what finished
        if json.loads(path.read_text())["horizon"] == 3:
            path.unlink()
    compare.main(argv + ["--report=True"])
    partial = (tmp_path / "horizon.md").read_text()
    assert "| π-Distill α=0 | 50.0 (n=1) | – |" in partial and "7 of 14 runs finished" in capsys.readouterr().out
    assert "| RL | 0 | 50.0 (25 / 25 / 25) | – |" in partial  # every run, seed by seed
    monkeypatch.setattr(compare, "execute", fake_execute)  # more seeds of one method: only its runs are made
    started.clear()
    compare.main(argv + ["--methods=opsd", "--seeds=2"])
    assert sorted(started) == [("OPSD", 1), ("OPSD", 3), ("OPSD", 3)]  # seed 1 at both; seed 0 at 3 was deleted
    table = (tmp_path / "horizon.md").read_text()
    assert "| OPSD | 50.0 ± 0.0 (n=2) | 50.0 ± 0.0 (n=2) |" in table
    assert "| OPSD | 1 | 50.0 (25 / 25 / 25) | 50.0 (25 / 25 / 25) |" in table
    assert set(compare.METHOD_KEYS.values()) == set(compare.METHODS)  # every method has a key
    with pytest.raises(config.ConfigError, match="methods='ppo'"):
        compare.CompareConfig(horizons="1", methods="ppo")


def test_compare_reports_an_environment_without_the_toy_statistics(tmp_path):
    premise = dict(student=0.1, **{k: dict(teacher=0.5, delta=0.4, kl_episode=1.0, kl_token=0.1) for k in env_api.PI_KINDS})
    cc = dataclasses.asdict(compare.CompareConfig(out_dir=str(tmp_path), env="test_all:EndlessEnv"))
    sft_run = dict(method="SFT w/o CoT + RL", seed=0, pi_kind="calls", final=dict(student=0.2, teacher=0.3),
                   sft=dict(val=0.2, step=1, student=0.2), seconds=1.0, curve=[])
    table = compare.write_report(cc, "python compare.py", premise, [sft_run], "cpu")
    assert "| base | 10.0 | – | – | 50.0 |" in table
    assert "| SFT w/o CoT (checkpoint by validation) | 20.0 (n=1) | – | – | |" in table


def test_the_gpu_check_runs_its_code_path_on_cpu_with_tiny_settings(tmp_path):
    """gpu_check.py's three parts on CPU (what a GPU session runs, with tiny settings): the default run's speed and
    evaluations, a round of each algorithm with and without --logit_chunk, one round of each TRL trainer."""
    import gpu_check
    lines = gpu_check.main(["--device=cpu", "--tiny=True", "--check_rounds=2", "--check_chunk=4"])
    assert lines[0].startswith("gpu_check on cpu") and re.match(r"1\. .* rounds/s .*round 2 \d\.\d{3}$", lines[1])
    assert [re.match(r"2\. (\w+) .*--logit_chunk=(\d+): peak [\d.]+ GB, [\d.]+ s per round", line).groups()
            for line in lines[2:6]] == [("pi_distill", "0"), ("pi_distill", "4"), ("opsd", "0"), ("opsd", "4")]
    assert [line.split(":")[0] for line in lines[6:]] == ["3. trl_trainers.py pi_distill", "3. trl_trainers.py opsd"]
