"""The test suite: the toy world, the agent's machinery, and every loss against an exact brute-force oracle.
Fast on a 2-core CPU; nothing is downloaded.   python -m pytest -q test_all.py"""
import dataclasses
import json
import random
import string

import pytest
import torch

import agent
import toy_env

# ----------------------------------------------------------------------------- the toy world


@pytest.mark.parametrize("split", ["train", "test"])
def test_frontier_solves_every_task(split):
    env = toy_env.ToyShopEnv(split)
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
        assert len(demo) >= 3 and demo[0] == f"find_user {task['name']}" and demo[1] == f"get_orders {task['uid']}"
    a = toy_env.noisy_episode(env, 5, random.Random(1))
    assert a == toy_env.noisy_episode(env, 5, random.Random(1))


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
    texts = [env.privileged_info(k) for k in toy_env.PI_KINDS]
    assert all(texts) and len(set(texts)) == 3
    for pi in texts:
        teacher = toy_env.system_prompt(pi)
        assert toy_env.PI_OPEN in teacher and pi in teacher
        assert teacher.replace(toy_env.pi_block(pi), "") == toy_env.system_prompt()
    with pytest.raises(ValueError):
        env.privileged_info("everything")


def test_malformed_actions_never_crash_and_use_a_turn():
    rng = random.Random(0)
    shapes = ["", " ", "\n\n", "cancel", "cancel #12 #13", "get_orders", "x" * 5000, "find_user " + "a" * 300,
              "respond", "\x00\x01", "🙂 find_user", "return U37", "cancel U37", "find_user alice\n", None, 17]
    shapes += ["".join(rng.choice(string.printable) for _ in range(rng.randrange(40))) for _ in range(500)]
    env = toy_env.ToyShopEnv()
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
            request = toy_env.REQUESTS[t["kind"]].format(**t)
            assert first == f"get_orders {t['uid']}" and t["uid"] not in request + toy_env.SYSTEM_PROMPT
        else:
            assert first.startswith("find_user")
    assert all(not toy_env.make_task(s, shortcut_frac=0.0)["shortcut"] for s in range(200))


def test_behaviour_policy_is_grounded_and_rarely_succeeds():
    env, rng = toy_env.ToyShopEnv(), random.Random(0)
    for seed in range(300):
        request, history = toy_env.noisy_episode(env, seed, rng)
        seen = request
        for action, obs in history:
            assert action.split()[1] in seen.split() + ["done", *toy_env.STATUSES], (action, seen)
            seen += " " + obs
    assert 0.03 <= toy_env.success_rate(toy_env.noisy_episode, n=2000) <= 0.10
    assert toy_env.success_rate(toy_env.random_valid_policy, n=2000) < 0.03


# ----------------------------------------------------------------------------- the agent's machinery

TINY = dict(n_layer=1, n_embd=32, n_head=2, warmup_steps=4, warmup_batch=8, warmup_eval_every=4,
            eval_tasks=16, tasks_per_step=2, group_size=4, eval_every=2, steps=2)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny base model (4 warm-up steps), its tokenizer and config, cached in a temporary directory."""
    cfg = agent.Config(**TINY, cache_dir=str(tmp_path_factory.mktemp("cache")))
    model, tok = agent.load_base(cfg, torch.device("cpu"))
    return cfg, model, tok


def test_config_overrides_and_clear_errors():
    cfg = agent.parse_args(agent.Config, ["--lr=0.01", "--resume=true", "--pi_kind=names", "--steps=3"])
    assert (cfg.lr, cfg.resume, cfg.pi_kind, cfg.steps) == (0.01, True, "names", 3)
    for argv, needle in [(["--lr_rate=1"], "lr_rate"), (["--steps=ten"], "--steps"), (["lr=1"], "--key=value"),
                         (["--resume=maybe"], "--resume"), (["--pi_kind=all"], "pi_kind")]:
        with pytest.raises(SystemExit) as err:
            agent.parse_args(agent.Config, argv)
        assert needle in str(err.value)


def test_tokenizer_round_trips_and_ids_are_single_tokens(tiny):
    _, _, tok = tiny
    for text in agent.environment_texts(n_tasks=100):
        assert tok.decode(tok.encode(text)) == text
    for pool in toy_env.POOLS.values():
        for word in pool["uids"] + pool["oids"] + pool["names"] + pool["items"]:
            assert len(tok.encode(" " + word)) == 1, word
    assert len(tok.encode("find_user")) == len(tok.encode(toy_env.step_label(1))) == 1


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
            _, logp = agent.score(model, tok, episodes, "teacher" if with_pi else "student")
        assert mask.sum() > 0
        assert torch.allclose(logp * mask, logp_behaviour * mask, atol=1e-4)
        other = agent.score(model, tok, episodes, "student" if with_pi else "teacher")[1]
        assert other.shape == logp.shape  # one column per continuation token in both views


def test_kl_full_vocab_matches_brute_force():
    torch.manual_seed(0)
    p, q = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    expected = torch.zeros(2)
    for b in range(2):
        for t in range(3):
            P, Q = p[b, t].softmax(-1), q[b, t].softmax(-1)
            expected[b] += mask[b, t] * sum(P[v] * (P[v].log() - Q[v].log()) for v in range(4))
    assert torch.allclose(agent.kl_full_vocab(p, q, mask), expected, atol=1e-6)
    assert torch.allclose(agent.kl_full_vocab(p, p, mask), torch.zeros(2), atol=1e-6)


def test_same_seed_same_rollouts(tiny):
    cfg, model, tok = tiny
    run = lambda: agent.rollout(model, tok, cfg, [("test", s) for s in range(8)], False, torch.Generator().manual_seed(5))
    assert [e.tokens for e in run()] == [e.tokens for e in run()]


def test_warmup_cache_is_used(tiny, monkeypatch, capsys):
    cfg, model, tok = tiny
    monkeypatch.setattr(agent, "warm_up", lambda *a: pytest.fail("warm-up ran although a cached base exists"))
    again, _ = agent.load_base(cfg, torch.device("cpu"))
    assert "loaded" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# ----------------------------------------------------------------------------- exact oracles for the losses
# A two-view tabular policy on a V-token vocabulary: state 0 emits the first token, state 1 + o1 the second.
# Shared weights W give the student's logits; the teacher adds U (what the PI block changes). Every sequence
# is enumerated, so expectations and gradients are exact.

import itertools  # noqa: E402

import pi_distill  # noqa: E402

V = 3


def tabular(T, seed=0, teacher_shift=1.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(1 + V, V, generator=g).requires_grad_()
    U = (teacher_shift * torch.randn(1 + V, V, generator=g)).requires_grad_()
    seqs = list(itertools.product(range(V), repeat=T))
    R = {o: float(torch.rand(1, generator=g)) for o in seqs}
    return W, U, seqs, R


def view_logits(W, U, o, view):
    """[1, T, V] logits of each position of sequence o under one view."""
    states = [0] + [1 + t for t in o[:-1]]
    logits = torch.stack([W[s] + (U[s] if view == "teacher" else 0) for s in states])
    return logits.unsqueeze(0)


def token_logp(logits, o):
    return torch.log_softmax(logits, -1)[0, torch.arange(len(o)), torch.tensor(o)].unsqueeze(0)


def seq_prob(W, U, o, view):
    return token_logp(view_logits(W, U, o, view), o).sum().exp()


def grads(value, params):
    return torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)


def expected_pi_distill_grad(W, U, seqs, A, alpha, eps=1e3):
    """E_{o~π_T}[∇ pi_distill_loss(o)], enumerated exactly (one-sequence batches, weighted by π_T(o)).
    The default ε is wide enough that no clipping is active."""
    total = 0
    for o in seqs:
        lt = token_logp(view_logits(W, U, o, "teacher"), o)
        ls = token_logp(view_logits(W, U, o, "student"), o)
        loss, _ = pi_distill.pi_distill_loss(lt, lt.detach(), ls, torch.tensor([A[o]]), torch.ones_like(lt), alpha, eps,
                                             ratio_cap=1e9)
        total = total + seq_prob(W, U, o, "teacher").detach() * loss
    return grads(total, [W, U])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_pi_distill_gradient_is_exact_for_one_token_actions(alpha):
    """T = 1: E_{π_T}[∇L] = −∇[α E_{π_T}[A] + (1 − α) E_{π_S}[A]] exactly (J_T and J_S of the paper)."""
    W, U, seqs, R = tabular(T=1)
    A = {o: R[o] - 0.4 for o in seqs}  # any baseline: it cancels in expectation
    got = expected_pi_distill_grad(W, U, seqs, A, alpha)
    J_T = sum(seq_prob(W, U, o, "teacher") * A[o] for o in seqs)
    J_S = sum(seq_prob(W, U, o, "student") * A[o] for o in seqs)
    want = grads(-(alpha * J_T + (1 - alpha) * J_S), [W, U])
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6)
    assert got[1].abs().sum() > 0 if alpha > 0 else torch.all(got[1] == 0)  # U only through the teacher term


def test_pi_distill_teacher_term_with_kl_shaping_is_exact_on_sequences():
    """T = 2, α = 1: with A = R − β·sg KL_seq (exact full-vocabulary KL(π_T‖π_S) summed over the positions),
    the expected gradient is −(1/T)∇ E_{π_T}[R − β KL_seq] — Algorithm 1's teacher objective."""
    T, beta = 2, 0.3
    W, U, seqs, R = tabular(T=T)
    A = {}
    for o in seqs:
        kl = agent.kl_full_vocab(view_logits(W, U, o, "teacher").detach(), view_logits(W, U, o, "student").detach(),
                                 torch.ones(1, T))
        A[o] = R[o] - beta * kl.item()
    got = expected_pi_distill_grad(W, U, seqs, A, alpha=1.0)
    want = grads(-sum(seq_prob(W, U, o, "teacher") * A[o] for o in seqs) / T, [W, U])
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6)


def test_pi_distill_student_term_on_sequences_where_views_agree():
    """T = 2, α = 0, at a point where the PI changes nothing (U = 0, so ρ_S = 1): the per-token student term's
    expected gradient is −(1/T)∇ E_{π_S}[A] exactly, and nothing reaches the teacher-only weights U."""
    W, U, seqs, R = tabular(T=2, teacher_shift=0.0)
    got = expected_pi_distill_grad(W, U, seqs, R, alpha=0.0)
    want = grads(-sum(seq_prob(W, U, o, "student") * R[o] for o in seqs) / 2, [W, U])
    assert torch.allclose(got[0], want[0], atol=1e-6) and torch.all(got[1] == 0)


def test_pi_distill_stop_gradients_and_alpha_extremes():
    torch.manual_seed(0)
    lt, ls = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    old, A, mask = lt.detach() + 0.05, torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    for alpha in (1.0, 0.0):
        loss, _ = pi_distill.pi_distill_loss(lt, old, ls, A, mask, alpha)
        g_t, g_s = torch.autograd.grad(loss, [lt, ls], allow_unused=True, materialize_grads=True)
        if alpha == 1.0:
            assert torch.all(g_s == 0) and g_t.abs().sum() > 0  # α = 1: nothing through the student view
        else:
            assert torch.all(g_t == 0) and g_s.abs().sum() > 0  # α = 0: nothing through the teacher (sg π_T)


def test_clipping_zeroes_the_gradient_where_it_should():
    def grad_of(rho_T, rho_S, adv, alpha):
        lt = torch.zeros(1, 1, requires_grad=True)
        ls = torch.tensor([[float(torch.log(torch.tensor(rho_S)))]], requires_grad=True)
        old = -torch.log(torch.tensor([[rho_T]]))
        loss, stats = pi_distill.pi_distill_loss(lt, old, ls, torch.tensor([adv]), torch.ones(1, 1), alpha, 0.2, 3.0)
        return [g.item() for g in torch.autograd.grad(loss, [lt, ls], materialize_grads=True)], loss.item(), stats
    # teacher ratio: outside [0.8, 1.2] on the side the advantage pushes towards -> clipped, no gradient
    assert grad_of(1.5, 1.0, +1.0, 1.0)[0][0] == 0 and grad_of(1.5, 1.0, -1.0, 1.0)[0][0] != 0
    assert grad_of(0.5, 1.0, -1.0, 1.0)[0][0] == 0 and grad_of(0.5, 1.0, +1.0, 1.0)[0][0] != 0
    assert grad_of(1.1, 1.0, +1.0, 1.0)[0][0] != 0
    # student ratio π_S / sg π_T (the teacher's current log-prob is 0 here): dual-clip above ratio_cap when A < 0
    g, loss, stats = grad_of(1.0, 5.0, -1.0, 0.0)
    assert g[1] == 0 and loss == pytest.approx(3.0) and stats["clip_S"] == 1.0
    assert grad_of(1.0, 2.0, -1.0, 0.0)[0][1] != 0       # between 1 + ε and the cap: unclipped
    assert grad_of(1.0, 5.0, +1.0, 0.0)[0][1] == 0       # above 1 + ε with A > 0: PPO clip


import opsd  # noqa: E402


def expected_opsd_grad(W, U, seqs, R, beta, estimator, b=0.4):
    """E_{o~π_S}[∇ loss(o)] of one OPSD estimator, enumerated exactly; advantages use a constant baseline b."""
    total = 0
    for o in seqs:
        logits_S, logits_T = view_logits(W, U, o, "student"), view_logits(W, U, o, "teacher").detach()
        ls, lt = token_logp(logits_S, o), token_logp(logits_T, o)
        mask, A, kl = torch.ones_like(ls), torch.tensor([R[o] - b]), None
        log_ratio = (ls - lt).detach()
        if estimator == "analytic":
            kl = agent.kl_per_position(logits_S, logits_T)
        elif estimator == "reward":
            A = A - beta * log_ratio.sum(1)
        elif estimator == "token":
            A = A.unsqueeze(1) - beta * log_ratio
        if estimator == "trap":  # the known bug: the sampled log-ratio back-propagated as a loss
            loss = opsd.opsd_loss(ls, ls.detach(), A, mask, beta, eps=1e3)[0] + beta * (ls - lt).mean()
        else:
            loss = opsd.opsd_loss(ls, ls.detach(), A, mask, beta, eps=1e3, kl_tokens=kl)[0]
        total = total + seq_prob(W, U, o, "student").detach() * loss
    return grads(total, [W, U])[0]  # the student view only has the shared weights W


def exact_opsd_grad(W, U, seqs, R, beta, T):
    """−(1/T)∇[E_{π_S}[R] − β KL(π_S ‖ sg π_T)], sequence-level KL, by enumeration and autograd."""
    J = 0
    for o in seqs:
        p_S = seq_prob(W, U, o, "student")
        log_p_T = token_logp(view_logits(W, U, o, "teacher"), o).sum().detach()
        J = J + p_S * R[o] - beta * p_S * (p_S.log() - log_p_T)
    return grads(-J / T, [W])[0]


@pytest.mark.parametrize("estimator", ["analytic", "reward", "token"])
def test_opsd_estimators_are_exact_for_one_token_actions(estimator):
    W, U, seqs, R = tabular(T=1, seed=1)
    got = expected_opsd_grad(W, U, seqs, R, 0.5, estimator)
    assert torch.allclose(got, exact_opsd_grad(W, U, seqs, R, 0.5, T=1), atol=1e-6)


def test_opsd_on_sequences_reward_form_is_exact_and_analytic_is_the_per_state_kl():
    """T = 2: the episode-reward form is the exact gradient of J_OPSD. The analytic and per-token forms agree
    with each other and equal the gradient of the KL at the visited states (the states' weights held fixed)."""
    T, beta = 2, 0.5
    W, U, seqs, R = tabular(T=T, seed=2)
    exact = exact_opsd_grad(W, U, seqs, R, beta, T)
    assert torch.allclose(expected_opsd_grad(W, U, seqs, R, beta, "reward"), exact, atol=1e-6)
    pg = -sum(seq_prob(W, U, o, "student") * R[o] for o in seqs) / T
    kl_at_states = sum(seq_prob(W, U, o, "student").detach() * agent.kl_full_vocab(
        view_logits(W, U, o, "student"), view_logits(W, U, o, "teacher").detach(), torch.ones(1, T)).sum()
        for o in seqs)
    want = grads(pg + beta * kl_at_states / T, [W])[0]
    for estimator in ("analytic", "token"):
        assert torch.allclose(expected_opsd_grad(W, U, seqs, R, beta, estimator), want, atol=1e-6)
    assert not torch.allclose(want, exact, atol=1e-3)  # the two differ on sequences: a documented choice


def test_opsd_suite_catches_the_sampled_log_ratio_trap():
    """Back-propagating log π_S(o) − log π_T(o) on on-policy samples has zero expected gradient: the trap's
    estimator equals plain RL and misses the KL gradient, and the oracle comparison sees it."""
    W, U, seqs, R = tabular(T=1, seed=3)
    trap = expected_opsd_grad(W, U, seqs, R, 0.5, "trap")
    plain_rl = expected_opsd_grad(W, U, seqs, R, 0.0, "reward")
    assert torch.allclose(trap, plain_rl, atol=1e-6)
    assert not torch.allclose(trap, exact_opsd_grad(W, U, seqs, R, 0.5, T=1), atol=1e-3)


# ----------------------------------------------------------------------------- runs: records, resume, end to end


def tiny_run_config(cls, tiny, out_dir, **kw):
    base_cfg = tiny[0]
    return cls(**(dataclasses.asdict(base_cfg) | dict(out_dir=str(out_dir), eval_every=100, eval_tasks=8) | kw))


def test_resume_gives_the_same_next_step_as_an_uninterrupted_run(tiny, tmp_path):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path / "full", steps=2)
    full = agent.Run(cfg, "full")
    full.train(pi_distill.train_step)
    part = agent.Run(dataclasses.replace(cfg, out_dir=str(tmp_path / "part"), steps=1), "part")
    part.train(pi_distill.train_step)
    resumed = agent.Run(dataclasses.replace(cfg, out_dir=str(tmp_path / "part"), steps=2, resume=True), "resumed")
    resumed.train(pi_distill.train_step)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    def training_records(run_dir):  # the interrupted run also evaluated at its end: compare the steps themselves
        records = [json.loads(line) for line in open(tmp_path / run_dir / "metrics.jsonl")]
        return [{k: v for k, v in r.items() if k != "time"} for r in records if not r.get("eval")]
    assert training_records("part") == training_records("full") and len(training_records("full")) == 2
    assert (tmp_path / "full" / "curves.png").stat().st_size > 0 and (tmp_path / "full" / "config.json").exists()


def test_missing_or_mismatched_checkpoint_is_a_clear_error(tiny, tmp_path):
    cfg = tiny_run_config(pi_distill.PiDistillConfig, tiny, tmp_path, steps=1, resume=True)
    with pytest.raises(SystemExit, match="no checkpoint"):
        agent.Run(cfg, "x").train(pi_distill.train_step)
    agent.Run(dataclasses.replace(cfg, resume=False), "x").train(pi_distill.train_step)
    with pytest.raises(SystemExit, match="alpha"):
        agent.Run(dataclasses.replace(cfg, alpha=0.9), "x").train(pi_distill.train_step)


def test_opsd_steps_move_the_student_toward_a_frozen_teacher(tmp_path):
    """On the shipped base, with β large enough that the KL term leads: KL(π_S ‖ π_T) on fixed student
    episodes must fall within a few OPSD steps."""
    import copy
    cfg = opsd.OPSDConfig(out_dir=str(tmp_path), lr=1e-3, beta=5.0, teacher="frozen", tasks_per_step=4)
    run = agent.Run(cfg, "opsd")
    run.extra["teacher"] = copy.deepcopy(run.model).requires_grad_(False)
    episodes = agent.rollout(run.model, run.tok, cfg, [("train", s) for s in range(64)], False, torch.Generator().manual_seed(0))
    _, mask, _ = agent.batch_continuations(episodes, "cpu")
    def kl():
        with torch.no_grad():
            return agent.kl_full_vocab(agent.score(run.model, run.tok, episodes, "student")[0],
                                       agent.score(run.extra["teacher"], run.tok, episodes, "teacher")[0], mask).mean().item()
    before = kl()
    for _ in range(6):
        opsd.train_step(run)
        run.step += 1
    assert kl() < 0.7 * before


E2E_STEPS, E2E_MARGIN = 40, 0.03  # measured: 4.3% -> 9.7% on 300 validation tasks


def test_pi_distill_steps_raise_student_success(tmp_path):
    """End to end on the shipped base model (cache/): a few seeded π-Distill rounds lift the student's (no PI)
    success on validation train tasks."""
    cfg = pi_distill.PiDistillConfig(out_dir=str(tmp_path), eval_tasks=300)
    run = agent.Run(cfg, "e2e")
    def student():
        return agent.evaluate(run.model, run.tok, cfg, "student", split="val")["success"]
    before = student()
    for _ in range(E2E_STEPS):
        pi_distill.train_step(run)
        run.step += 1
    assert student() >= before + E2E_MARGIN


# ----------------------------------------------------------------------------- a pretrained model's own tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory):
    """A randomly initialised Qwen3 with a byte-level BPE tokenizer and a ChatML template, built here and saved
    the way a Hugging Face checkpoint is: the path a user's --model=Qwen/... takes, without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
    path = tmp_path_factory.mktemp("hf_model")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(agent.environment_texts(n_tasks=100), trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|im_start|>", "<|im_end|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>")
    hf.chat_template = CHATML
    hf.save_pretrained(path)
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, head_dim=16)).save_pretrained(path)
    return str(path)


def test_pretrained_tokenizer_renders_the_chat_template(hf_model_dir):
    from transformers import AutoTokenizer
    tok = agent.HFChatTokenizer(AutoTokenizer.from_pretrained(hf_model_dir))
    env = toy_env.ToyShopEnv()
    request, info = env.reset(0)
    pi = env.privileged_info("calls")
    teacher, student = tok.decode(tok.prompt(info["system"], request, pi)), tok.decode(tok.prompt(info["system"], request))
    assert teacher.replace(toy_env.pi_block(pi), "") == student and pi in teacher
    tokens, mask = agent.episode_tokens(tok, [("find_user alice", "user U37"), ("get_orders U37", None)])
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
    cfg = cfg_class(model=hf_model_dir, out_dir=str(tmp_path), steps=1, tasks_per_step=2, group_size=2,
                    eval_tasks=4, teacher="live") if algorithm == "opsd" else \
        cfg_class(model=hf_model_dir, out_dir=str(tmp_path), steps=1, tasks_per_step=2, group_size=2, eval_tasks=4,
                  alpha_anneal_steps=0)
    run = agent.Run(cfg, algorithm)
    before = [p.detach().clone() for p in run.model.parameters()]
    final = run.train(module.train_step)
    assert 0.0 <= final["student"] <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
