"""The losses against exact oracles: read this beside rl.py, pi_distill.pi_distill_loss and opsd.opsd_loss.

A two-view tabular policy on a 3-token vocabulary stands in for the model: the student's logits are shared weights
W, the teacher's add U (what the PI block changes), and an episode is one or two tokens. Every sequence is
enumerated, so each expectation and gradient below is exact, not sampled. What the tests prove:
- π-Distill's loss has the gradient of α·J_T + (1 − α)·J_S where its docstring says so (one-token actions; the
  teacher term with KL shaping on sequences; the student term where the views agree), its stop-gradients and α
  extremes hold, the optional forward KL is exact, and the paper's clip on π_S / π_T drifts on pure-noise
  advantages while --student_trust_region is exact importance sampling;
- OPSD's three KL estimators have the exact gradient where they should, and the suite catches the trap of
  PAPER.md §5 (back-propagating the sampled log-ratio has zero expected gradient);
- clipping zeroes the gradient exactly where PPO's clip should, and the full-vocabulary KL, the entropy and the
  EMA update equal their brute-force definitions.
python -m pytest -q test_losses.py   (a few seconds; the rest of the suite: test_all.py, test_trl.py)"""
import itertools
import math

import pytest
import torch

import opsd
import pi_distill
import rl

# A two-view tabular policy on a V-token vocabulary: state 0 emits the first token, state 1 + o1 the second.
# Shared weights W give the student's logits; the teacher adds U (what the PI block changes). Every sequence
# is enumerated, so expectations and gradients are exact.


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
        kl = rl.kl_per_episode(view_logits(W, U, o, "teacher").detach(), view_logits(W, U, o, "student").detach(),
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


def expected_student_grad(W, U, seqs, advantages, trust_region, eps=0.2):
    """E_{o~π_T} E_A[∇ of the α = 0 loss], enumerated: advantages maps each sequence to [(probability, A), ...]."""
    total = 0
    for o in seqs:
        lt = token_logp(view_logits(W, U, o, "teacher"), o)
        ls = token_logp(view_logits(W, U, o, "student"), o)
        for p, a in advantages[o]:
            loss, _ = pi_distill.pi_distill_loss(lt, lt.detach(), ls, torch.tensor([a]), torch.ones_like(lt), 0.0, eps,
                                                 ratio_cap=1e9, logp_student_old=ls.detach() if trust_region else None)
            total = total + p * seq_prob(W, U, o, "teacher").detach() * loss
    return grads(total, [W, U])


def test_pi_distill_student_trust_region_is_exact_importance_sampling():
    """--student_trust_region at θ = θ_old (T = 1): E_{π_T}[∇L_S] = −∇E_{π_S}[A] exactly, with ε = 0.2 (the clip on
    π_S,θ / π_S,old is inactive at the first update), where the paper's clip on ρ_S = π_S / π_T is not."""
    W, U, seqs, R = tabular(T=1)
    A = {o: [(1.0, R[o] - 0.4)] for o in seqs}
    want = grads(-sum(seq_prob(W, U, o, "student") * A[o][0][1] for o in seqs), [W, U])
    got = expected_student_grad(W, U, seqs, A, trust_region=True)
    assert torch.allclose(got[0], want[0], atol=1e-6) and torch.all(got[1] == 0)
    paper = expected_student_grad(W, U, seqs, A, trust_region=False)
    assert not torch.allclose(paper[0], want[0], atol=1e-3)  # the views differ enough for ε = 0.2 to clip


def test_pi_distill_clip_on_the_view_ratio_drifts_where_the_reward_says_nothing():
    """Advantages ±1 with equal probability whatever the token (pure noise): the right expected gradient is 0. The
    paper's clip on ρ_S = π_S / π_T keeps only A < 0 where ρ_S > 1 + ε and only A > 0 where ρ_S < 1 − ε, so its
    expected gradient is not 0 and moves the student towards the teacher; the trust-region form's is 0."""
    W, U, seqs, _ = tabular(T=1)
    noise = {o: [(0.5, 1.0), (0.5, -1.0)] for o in seqs}
    assert all(g.abs().max() < 1e-7 for g in expected_student_grad(W, U, seqs, noise, trust_region=True))
    drift = expected_student_grad(W, U, seqs, noise, trust_region=False)[0]
    assert drift.abs().max() > 1e-3
    p_T = torch.softmax(W[0] + U[0], -1).detach()
    p_S = torch.softmax(W[0], -1).detach()
    assert torch.dot(torch.softmax(W[0].detach() - drift[0], -1) - p_S, p_T - p_S) > 0  # towards the teacher


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


def test_pi_distill_forward_kl_term_is_exact():
    """The student's forward-KL term (1 − α)·c·KL(sg π_T ‖ π_S), per position, summed over the model tokens / N: its
    gradient on the student's logits is exactly (1 − α)·c·(softmax(z_S) − softmax(z_T)) / N, whatever the advantage
    (here 0, where the policy-gradient terms have none), and none reaches the teacher's logits."""
    torch.manual_seed(0)
    z_T, z_S = torch.randn(2, 3, V, requires_grad=True), torch.randn(2, 3, V, requires_grad=True)
    o = torch.randint(V, (2, 3, 1))
    lt, ls = (torch.log_softmax(z, -1).gather(-1, o).squeeze(-1) for z in (z_T, z_S))
    mask, A, alpha, c = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]), torch.zeros(2), 0.5, 0.25  # A = 0: KL only
    policy_loss, _ = pi_distill.pi_distill_loss(lt, lt.detach(), ls, A, mask, alpha)
    assert policy_loss.item() == 0.0
    n = 7.0  # a normaliser other than this batch's 5 tokens: the round's, over several micro-batches
    kl = rl.kl_per_position(z_T.detach(), z_S)
    loss = policy_loss + (1 - alpha) * c * pi_distill.student_forward_kl(kl, mask, n)
    g_T, g_S = grads(loss, [z_T, z_S])
    want = (1 - alpha) * c * (torch.softmax(z_S, -1) - torch.softmax(z_T, -1)) * mask.unsqueeze(-1) / n
    assert torch.allclose(g_S, want, atol=1e-6) and torch.all(g_T == 0)
    exact = sum((p * (p / q).log()).sum() for p, q in zip(torch.softmax(z_T, -1)[mask.bool()],
                                                          torch.softmax(z_S, -1)[mask.bool()])) / n
    assert pi_distill.student_forward_kl(kl, mask, n).item() == pytest.approx(exact.item(), rel=1e-5)


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




def expected_opsd_grad(W, U, seqs, R, beta, estimator, b=0.4):
    """E_{o~π_S}[∇ loss(o)] of one OPSD estimator, enumerated exactly; advantages use a constant baseline b."""
    total = 0
    for o in seqs:
        logits_S, logits_T = view_logits(W, U, o, "student"), view_logits(W, U, o, "teacher").detach()
        ls, lt = token_logp(logits_S, o), token_logp(logits_T, o)
        mask, A, kl = torch.ones_like(ls), torch.tensor([R[o] - b]), None
        log_ratio = (ls - lt).detach()
        if estimator == "analytic":
            kl = rl.kl_per_position(logits_S, logits_T)
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
    kl_at_states = sum(seq_prob(W, U, o, "student").detach() * rl.kl_per_episode(
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


def test_kl_full_vocab_matches_brute_force():
    torch.manual_seed(0)
    p, q = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    expected = torch.zeros(2)
    for b in range(2):
        for t in range(3):
            P, Q = p[b, t].softmax(-1), q[b, t].softmax(-1)
            expected[b] += mask[b, t] * sum(P[v] * (P[v].log() - Q[v].log()) for v in range(4))
    assert torch.allclose(rl.kl_per_episode(p, q, mask), expected, atol=1e-6)
    assert torch.allclose(rl.kl_per_episode(p, p, mask), torch.zeros(2), atol=1e-6)


def test_entropy_and_ema_match_brute_force():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    expected = torch.tensor([[-sum(p * p.log() for p in logits[b, t].softmax(-1)) for t in range(3)] for b in range(2)])
    assert torch.allclose(rl.entropy_per_position(logits), expected, atol=1e-6)
    assert torch.allclose(rl.entropy_per_position(torch.zeros(1, 1, 5)), torch.tensor([[math.log(5)]]), atol=1e-6)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert math.isclose(rl.mean_entropy(logits, mask), ((expected * mask).sum() / 3).item(), abs_tol=1e-6)
    average, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = [0.9 * a + 0.1 * m for a, m in zip(average.parameters(), model.parameters())]
    rl.ema_update(average, model, 0.9)
    assert all(torch.allclose(a, e) for a, e in zip(average.parameters(), expected))
