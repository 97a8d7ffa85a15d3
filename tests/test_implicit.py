"""Implicit meta-gradients (metagrad.implicit, Bilevel(method="implicit"), iMAML) in float64."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metagrad
from metagrad import Bilevel, ImplicitConfig
from metagrad.fewshot import adapt_task, make_algorithm
from metagrad.fewshot.network import cross_entropy
from metagrad.models import MLP

N, D = 12, 4


def _ridge_data():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, D)), rng.normal(size=N)
    xv, yv = rng.normal(size=(N, D)), rng.normal(size=N)
    eta = rng.normal(size=D) * 0.5
    return x, y, xv, yv, eta


def _ridge_loss(w, eta, batch):
    """Per-feature L2 strengths exp(η): 1/2 ‖Xw − y‖² + 1/2 Σ exp(η_i) w_i²."""
    x, y = batch
    return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(eta) * w**2)


def _val_loss(w, xv, yv):
    return 0.5 * jnp.sum((xv @ w - yv) ** 2)


def _closed_form(x, y, xv, yv, eta):
    """NumPy: w*(η) = A⁻¹ Xᵀy, A = XᵀX + diag(e^η); dV/dη_i = −e^{η_i} w*_i (A⁻¹ ∇_w V)_i."""
    a = x.T @ x + np.diag(np.exp(eta))
    w = np.linalg.solve(a, x.T @ y)
    v = np.linalg.solve(a, xv.T @ (xv @ w - yv))
    return w, -np.exp(eta) * w * v, a


def _implicit_hypergradient(x, y, xv, yv, eta, config):
    w_star, _, _ = _closed_form(x, y, xv, yv, np.asarray(eta))

    def val(e):
        w = metagrad.argmin_solution(_ridge_loss, jnp.asarray(w_star), e, (x, y), config=config)
        return _val_loss(w, xv, yv)

    return np.asarray(jax.grad(val)(jnp.asarray(eta)))


@pytest.mark.parametrize("solver", ["cg", "gmres", "bicgstab"])
def test_ridge_hypergradient_equals_closed_form(x64, solver):
    x, y, xv, yv, eta = _ridge_data()
    _, want, _ = _closed_form(x, y, xv, yv, eta)
    got = _implicit_hypergradient(
        x, y, xv, yv, eta, ImplicitConfig(solver=solver, maxiter=50, tol=1e-14)
    )
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-8


def test_root_and_fixed_point_forms_equal_closed_form(x64):
    x, y, xv, yv, eta = _ridge_data()
    w_star, want, a = _closed_form(x, y, xv, yv, eta)
    step = 1.0 / np.linalg.eigvalsh(a).max()
    config = ImplicitConfig(maxiter=50, tol=1e-14)  # GMRES, the default of these forms

    def gradient_map(w, e, batch):
        return jax.grad(_ridge_loss)(w, e, batch)

    def gd_map(w, e, batch):  # one gradient-descent step: its fixed point is the minimum
        return w - step * jax.grad(_ridge_loss)(w, e, batch)

    for form, fn in (
        (metagrad.root_solution, gradient_map),
        (metagrad.fixed_point_solution, gd_map),
    ):
        got = jax.grad(
            lambda e, form=form, fn=fn: _val_loss(
                form(fn, jnp.asarray(w_star), e, (x, y), config=config), xv, yv
            )
        )(jnp.asarray(eta))
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-8


def test_neumann_within_its_truncation_bound(x64):
    """Neumann with K terms and step α: w* − w_K = (I − αA)^K w*, so the hyper-gradient error is at
    most ‖∂_η F‖₂ ρ^K ‖w*‖ with ρ = max_i |1 − α λ_i(A)| (Lorraine et al. 2020)."""
    x, y, xv, yv, eta = _ridge_data()
    w_star, want, a = _closed_form(x, y, xv, yv, eta)
    lam = np.linalg.eigvalsh(a)
    alpha = 1.0 / lam.max()
    rho = np.max(np.abs(1 - alpha * lam))
    w_solve = np.linalg.solve(a, xv.T @ (xv @ w_star - yv))
    d_eta_f = np.diag(np.exp(eta) * w_star)  # ∂_η ∇_w L
    for terms in (5, 20, 80):
        config = ImplicitConfig(solver="neumann", maxiter=terms, neumann_alpha=alpha, warn=False)
        got = _implicit_hypergradient(x, y, xv, yv, eta, config)
        bound = np.linalg.norm(d_eta_f, 2) * rho**terms * np.linalg.norm(w_solve)
        assert np.linalg.norm(got - want) <= bound * (1 + 1e-9) + 1e-15
    # and the bound is not vacuous: 80 terms are far more accurate than 5
    assert rho**80 < 1e-3 * rho**5


def test_solve_linear_reports_the_residual(x64):
    a = jnp.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    b = {"u": jnp.array([1.0, 2.0]), "v": jnp.array(3.0)}

    def matvec(t):
        z = a @ jnp.concatenate([t["u"], t["v"][None]])
        return {"u": z[:2], "v": z[2]}

    x, info = metagrad.solve_linear(matvec, b, ImplicitConfig(tol=1e-12))
    want = np.linalg.solve(np.asarray(a) + 0.0, np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(np.append(x["u"], x["v"]), want, rtol=1e-10)
    assert bool(info.converged) and float(info.relative_residual) < 1e-12
    x, info = metagrad.solve_linear(matvec, b, ImplicitConfig(maxiter=1, damping=0.5))
    assert not bool(info.converged)
    want = np.linalg.solve(np.asarray(a) + 0.5 * np.eye(3), np.array([1.0, 2.0, 3.0]))
    z = np.append(x["u"], x["v"])
    residual = np.linalg.norm((np.asarray(a) + 0.5 * np.eye(3)) @ z - [1.0, 2.0, 3.0])
    np.testing.assert_allclose(float(info.residual), residual, rtol=1e-10)


def _cg_iterates(a, b, steps):
    """Textbook CG in numpy (float64) from x = 0: iterates x_1 … x_steps and each pᵀAp."""
    x, r = np.zeros_like(b), b.copy()
    p, iterates, curvatures = r.copy(), [], []
    for _ in range(steps):
        ap = a @ p
        curvatures.append(float(p @ ap))
        alpha = (r @ r) / curvatures[-1]
        x, r_next = x + alpha * p, r - alpha * ap
        p, r = r_next + (r_next @ r_next) / (r @ r) * p, r_next
        iterates.append(x)
    return iterates, curvatures


def test_cg_reports_and_optionally_stops_at_negative_curvature(x64):
    """On an indefinite system CG meets ``pᵀAp ≤ 0``: ``SolveInfo.negative_curvature`` says so;
    ``negative_curvature="stop"`` returns the iterate before that direction (``b`` before any
    step), ``"continue"`` is plain CG (the same iterates as the textbook algorithm)."""
    a = np.diag([3.0, 2.0, -1.0])
    b = np.array([1.0, 1.0, 0.8])
    iterates, curvatures = _cg_iterates(a, b, 3)
    assert curvatures[0] > 0 and curvatures[1] <= 0, curvatures  # the second direction is bad
    matvec = lambda v: jnp.asarray(a) @ v  # noqa: E731
    config = ImplicitConfig(tol=0.0, maxiter=3, warn=False)
    x, info = metagrad.solve_linear(matvec, jnp.asarray(b), config)
    np.testing.assert_allclose(np.asarray(x), iterates[2], rtol=1e-10)
    assert bool(info.negative_curvature)
    stop = dataclasses.replace(config, negative_curvature="stop")
    x, info = metagrad.solve_linear(matvec, jnp.asarray(b), stop)
    np.testing.assert_allclose(np.asarray(x), iterates[0], rtol=1e-12)
    assert bool(info.negative_curvature) and not bool(info.converged)
    # A bad first direction: b itself.
    x, info = metagrad.solve_linear(lambda v: -v, jnp.asarray(b), stop)
    np.testing.assert_allclose(np.asarray(x), b, rtol=1e-12)
    # A positive-definite system: nothing to report, the exact solution.
    spd = np.diag([3.0, 2.0, 1.0])
    x, info = metagrad.solve_linear(lambda v: jnp.asarray(spd) @ v, jnp.asarray(b), stop)
    np.testing.assert_allclose(np.asarray(x), b / np.diag(spd), rtol=1e-10)
    assert not bool(info.negative_curvature) and bool(info.converged)
    with pytest.raises(ValueError, match="negative_curvature must be one of continue, stop"):
        ImplicitConfig(negative_curvature="skip")
    with pytest.raises(ValueError, match="negative_curvature='stop' needs solver='cg'"):
        ImplicitConfig(solver="gmres", negative_curvature="stop")


def test_max_gain_caps_the_solution_norm_and_keeps_its_direction(x64):
    """A near-singular system amplifies b by ~1/ε: with ``max_gain`` the solution is rescaled to
    ``max_gain · ‖b‖`` along the exact solution's direction, and ``SolveInfo.capped`` says so; a
    solution within the bound is left as it is."""
    eps = 1e-4
    a = np.diag([2.0, 1.0, eps])
    b = np.array([1.0, 1.0, 1.0])
    exact = b / np.diag(a)  # ‖exact‖ ≈ 1e4
    matvec = lambda v: jnp.asarray(a) @ v  # noqa: E731
    config = ImplicitConfig(tol=1e-12, maxiter=10, max_gain=3.0)
    x, info = metagrad.solve_linear(matvec, jnp.asarray(b), config)
    want = exact * 3.0 * np.linalg.norm(b) / np.linalg.norm(exact)
    np.testing.assert_allclose(np.asarray(x), want, rtol=1e-10)
    assert bool(info.capped) and bool(info.converged)  # the solver's own solution converged
    wide = dataclasses.replace(config, max_gain=2e4)
    x, info = metagrad.solve_linear(matvec, jnp.asarray(b), wide)
    np.testing.assert_allclose(np.asarray(x), exact, rtol=1e-10)
    assert not bool(info.capped)
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="max_gain must be a finite number > 0"):
            ImplicitConfig(max_gain=bad)


def test_not_converged_warning_names_negative_curvature(x64):
    """The implicit meta-gradient of a saddle point: the warning says the system is indefinite
    and points at the line that asked for the meta-gradient (eagerly and under ``jit``)."""

    def inner(w, eta):
        return 0.5 * (w[0] ** 2 - w[1] ** 2) - jnp.dot(eta, w)

    def outer(eta):
        w = metagrad.argmin_solution(inner, jnp.zeros(2), eta, config=ImplicitConfig(maxiter=1))
        return jnp.sum(w)

    for differentiate in (jax.grad(outer), jax.jit(jax.grad(outer))):
        with pytest.warns(RuntimeWarning, match="non-positive curvature: the system is not") as got:
            differentiate(jnp.array([1.0, 2.0])).block_until_ready()
        # raised inside a jax.debug.callback, but it names the user's line, not JAX's
        assert {w.filename for w in got} == {__file__}


def test_argmin_vjp_returns_info_and_float0_for_integer_args(x64):
    x, y, xv, yv, eta = _ridge_data()
    w_star, want, _ = _closed_form(x, y, xv, yv, eta)
    labels = jnp.arange(N)  # an integer argument: gets a float0 cotangent

    def loss(w, e, batch, ints):
        del ints
        return _ridge_loss(w, e, batch)

    ct = jax.grad(_val_loss)(jnp.asarray(w_star), xv, yv)
    (ct_eta, ct_batch, ct_ints), info = metagrad.argmin_vjp(
        loss, jnp.asarray(w_star), (jnp.asarray(eta), (x, y), labels), ct, ImplicitConfig(tol=1e-13)
    )
    np.testing.assert_allclose(ct_eta, want, rtol=1e-9)
    assert ct_ints.dtype == jax.dtypes.float0 and ct_batch[0].shape == (N, D)
    assert bool(info.converged)


def test_closed_over_meta_parameters_are_differentiated(x64):
    x, y, xv, yv, eta = _ridge_data()
    w_star, want, _ = _closed_form(x, y, xv, yv, eta)

    def val(e):
        loss = lambda w: _ridge_loss(w, e, (x, y))  # noqa: E731  (closes over the traced η)
        w = metagrad.argmin_solution(loss, jnp.asarray(w_star), config=ImplicitConfig(tol=1e-14))
        return _val_loss(w, xv, yv)

    got = jax.jit(jax.grad(val))(jnp.asarray(eta))
    np.testing.assert_allclose(got, want, rtol=1e-9)


def _logistic_problem():
    """L2-regularised logistic regression (strongly convex) with per-feature strengths exp(η)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3))
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=20) > 0).astype(np.float64)
    xv = rng.normal(size=(20, 3))
    yv = (xv @ np.array([1.0, -2.0, 0.5]) > 0).astype(np.float64)

    def nll(w, batch):
        a, t = batch
        z = a @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - t * z)

    def inner(w, eta, batch):
        return nll(w, batch) + 0.5 * jnp.sum(jnp.exp(eta) * w**2)

    def outer(w, eta, batch):
        return nll(w, batch)

    return inner, outer, (x, y), (xv, yv), jnp.array([-1.0, -0.5, -2.0])


def test_implicit_bilevel_agrees_with_unrolled_mixflow(x64):
    inner, outer, batch, val, eta = _logistic_problem()
    results = {}
    for method, kw in (("unroll", {}), ("implicit", {"implicit": ImplicitConfig(tol=1e-12)})):
        problem = Bilevel(inner, outer, optax.sgd(1.0), steps=600, method=method, **kw)
        value, grad, result = jax.jit(
            lambda e, p=problem: p.value_and_grad(
                e, params=jnp.zeros(3), inner_batch=batch, outer_batch=val, return_inner=True
            )
        )(eta)
        results[method] = (value, grad)
    # the inner problem is solved to tolerance ...
    assert float(jnp.linalg.norm(jax.grad(inner)(result.params, eta, batch))) < 1e-10
    (v_u, g_u), (v_i, g_i) = results["unroll"], results["implicit"]
    assert float(v_u) == float(v_i)
    # ... and the implicit meta-gradient agrees with the unrolled (mixed-mode) one
    assert float(jnp.linalg.norm(g_i - g_u) / jnp.linalg.norm(g_u)) < 1e-4


def test_meta_train_step_switches_by_configuration(x64):
    inner, outer, batch, val, eta = _logistic_problem()
    problem = Bilevel(inner, outer, optax.sgd(1.0), steps=400, method="implicit")
    outer_opt = optax.sgd(0.5)
    step = metagrad.meta_train_step(problem, outer_opt)
    state = outer_opt.init(eta)
    e, losses = eta, []
    for _ in range(3):
        e, state, value = step(e, state, params=jnp.zeros(3), inner_batch=batch, outer_batch=val)
        losses.append(float(value))
    assert losses[-1] < losses[0]


def test_warns_with_the_residual_when_not_converged(x64):
    x, y, xv, yv, eta = _ridge_data()
    with pytest.warns(RuntimeWarning, match=r"did not converge.*relative residual [0-9.e+-]+ > "):
        _implicit_hypergradient(x, y, xv, yv, eta, ImplicitConfig(maxiter=1, tol=1e-12))
        jax.effects_barrier()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _implicit_hypergradient(x, y, xv, yv, eta, ImplicitConfig(maxiter=1, warn=False))
        jax.effects_barrier()


def test_errors_name_the_argument():
    w = jnp.zeros(3)
    loss = lambda w, e: jnp.sum((w - e) ** 2)  # noqa: E731
    with pytest.raises(ValueError, match="solver must be one of cg, neumann, gmres, bicgstab"):
        ImplicitConfig(solver="lu")
    with pytest.raises(ValueError, match="maxiter must be a positive int"):
        ImplicitConfig(maxiter=0)
    with pytest.raises(ValueError, match="damping must be a number >= 0"):
        ImplicitConfig(damping=-1.0)
    with pytest.raises(ValueError, match=r"cotangent: leaf 0 has shape \(2,\).*shape \(3,\)"):
        metagrad.argmin_vjp(loss, w, (w,), jnp.zeros(2))
    with pytest.raises(ValueError, match="cotangent must have the pytree structure of solution"):
        metagrad.argmin_vjp(loss, w, (w,), {"a": w})
    with pytest.raises(TypeError, match="args must be a tuple"):
        metagrad.argmin_vjp(loss, w, w, w)
    with pytest.raises(TypeError, match="inner_loss must return a scalar"):
        metagrad.argmin_solution(lambda w, e: w - e, w, w)
    with pytest.raises(ValueError, match="function's output: leaf 0 has shape"):
        metagrad.root_solution(lambda w, e: jnp.sum(w - e)[None], w, w)
    with pytest.raises(TypeError, match=r"solution\[0\] has dtype int"):
        metagrad.argmin_solution(lambda w, e: jnp.sum(e), [jnp.arange(3)], w)
    kw = {"inner_loss": loss, "outer_loss": loss, "inner_optimizer": optax.sgd(0.1), "steps": 2}
    with pytest.raises(ValueError, match="update_masks, first_order.*method='unroll'"):
        Bilevel(**kw, method="implicit", update_masks=[True, False], first_order=True)
    with pytest.raises(ValueError, match="implicit=ImplicitConfig.*configures method='implicit'"):
        Bilevel(**kw, implicit=ImplicitConfig())
    with pytest.raises(ValueError, match="method must be one of unroll, implicit"):
        Bilevel(**kw, method="ift")
    problem = Bilevel(**kw, method="implicit")
    with pytest.raises(ValueError, match="needs inner_batch=.*got inner_batches"):
        problem.value_and_grad(w, params=w, inner_batches=jnp.zeros((2, 3)), outer_batch=None)


@pytest.mark.parametrize(
    "name, fields, message",
    [("maml", {"method": "implicit"}, "method='implicit' needs proximal > 0"),
     ("imaml", {"learned_lr": "per_parameter"}, "a fixed learning rate"),
     ("maml", {"cg_damping": 1.0}, "cg_damping applies to method='implicit' only"),
     ("imaml", {"cg_damping": -1.0}, "cg_damping must be a finite number >= 0"),
     ("maml", {"cg_negative_curvature": "stop"},
      "cg_negative_curvature applies to method='implicit' only"),
     ("imaml", {"cg_negative_curvature": "halt"},
      "cg_negative_curvature must be one of 'continue', 'stop'"),
     ("maml", {"stationarity_tol": 1.0}, "stationarity_tol applies to method='implicit' only"),
     ("imaml", {"stationarity_tol": 0.0}, "stationarity_tol must be a finite number > 0"),
     ("maml", {"cg_max_gain": 1.0}, "cg_max_gain applies to method='implicit' only"),
     ("imaml", {"cg_max_gain": 0.0}, "cg_max_gain must be a finite number > 0")],
)  # fmt: skip
def test_implicit_algorithm_options_are_checked_by_name(name, fields, message):
    with pytest.raises(ValueError, match=message):
        make_algorithm(name, **fields)


def _tiny_task():
    """A tanh MLP 5-6-3 in float64 and one 3-way task of 6 support and 6 query examples."""
    model = MLP((5, 6, 3), activation="tanh")
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    key1, key2 = jax.random.split(jax.random.PRNGKey(1))
    task = (
        jax.random.normal(key1, (6, 5), jnp.float64),
        jnp.arange(6) % 3,
        jax.random.normal(key2, (6, 5), jnp.float64),
        jnp.arange(6) % 3,
    )
    return model, params, task


@pytest.mark.parametrize("momentum, damping", [(0.0, 0.0), (0.5, 0.0), (0.0, 3.0)])
def test_imaml_meta_gradient_is_the_proximal_formula(x64, momentum, damping):
    """iMAML: dθ*/dθ₀ = (I + H/λ)⁻¹, H the support-loss Hessian at θ* (dense, float64), whatever
    inner optimiser reached θ* (plain gradient descent or heavy-ball momentum); with the ridge δ
    of ``cg_damping``, λ (H + (λ + δ) I)⁻¹."""
    model, params, task = _tiny_task()
    lam = 2.0
    alg = make_algorithm(
        "imaml",
        steps=300,
        inner_lr=0.2,
        proximal=lam,
        cg_steps=100,
        cg_damping=damping,
        inner_momentum=momentum,
    )
    meta = alg.init_meta(params)
    got = jax.jit(jax.grad(lambda m: adapt_task(model, alg, m, task).loss))(meta)

    result = adapt_task(model, alg, meta, task)
    theta, unravel = jax.flatten_util.ravel_pytree(result.params)

    def support(t):
        return cross_entropy(model.apply(unravel(t), task[0]), task[1])

    def query(t):
        return cross_entropy(model.apply(unravel(t), task[2]), task[3])

    g_prox = jax.grad(support)(theta) + lam * (theta - jax.flatten_util.ravel_pytree(params)[0])
    assert float(jnp.linalg.norm(g_prox)) < 1e-9  # the inner problem is solved
    h = jax.hessian(support)(theta)
    want = lam * np.linalg.solve(
        np.asarray(h) + (lam + damping) * np.eye(theta.size), np.asarray(jax.grad(query)(theta))
    )
    got_flat = np.asarray(jax.flatten_util.ravel_pytree(got["params"])[0])
    assert np.linalg.norm(got_flat - want) / np.linalg.norm(want) < 1e-8


def test_stationarity_tol_keeps_only_stationary_tasks_in_the_meta_gradient(x64):
    """``stationarity_tol``: ``‖∇ inner loss(θ*)‖`` is measured per task (against the explicit
    proximal gradient); a task above the tolerance keeps its loss in the value but gives no
    meta-gradient, so the meta-gradient is (1/B) Σ over the stationary tasks only."""
    from metagrad.fewshot import meta_batch_loss

    model, params, task_a = _tiny_task()
    k1, k2 = jax.random.split(jax.random.PRNGKey(7))
    task_b = (
        3.0 * jax.random.normal(k1, (6, 5), jnp.float64),
        (jnp.arange(6) + 1) % 3,
        jax.random.normal(k2, (6, 5), jnp.float64),
        jnp.arange(6) % 3,
    )
    lam = 0.5
    alg = make_algorithm("imaml", steps=4, inner_lr=0.2, proximal=lam)  # stops short of θ*
    meta = alg.init_meta(params)
    theta0 = jax.flatten_util.ravel_pytree(params)[0]
    norms = []
    for task in (task_a, task_b):
        result = adapt_task(model, alg, meta, task)
        theta, unravel = jax.flatten_util.ravel_pytree(result.params)
        support = jax.grad(
            lambda t, u=unravel, x=task[0], y=task[1]: cross_entropy(model.apply(u(t), x), y)
        )
        want = float(jnp.linalg.norm(support(theta) + lam * (theta - theta0)))
        np.testing.assert_allclose(float(result.inner_gradient_norm), want, rtol=1e-10)
        norms.append(want)
    assert abs(norms[0] - norms[1]) > 0.1 * max(norms), norms
    kept = int(np.argmin(norms))
    tasks = tuple(jnp.stack(pair) for pair in zip(task_a, task_b, strict=True))
    tol = float(np.mean(norms))  # between the two

    def loss_and_grad(algorithm, batch):
        fn = lambda m: meta_batch_loss(model, algorithm, m, batch)  # noqa: E731
        return jax.value_and_grad(fn, has_aux=True)(meta)

    (value, per), grad = loss_and_grad(dataclasses.replace(alg, stationarity_tol=tol), tasks)
    (all_value, _), _ = loss_and_grad(alg, tasks)
    one = tuple(a[kept : kept + 1] for a in tasks)
    _, grad_kept = loss_and_grad(alg, one)
    np.testing.assert_allclose(float(value), float(all_value), rtol=1e-12)  # both losses count
    assert per["stationary"].tolist() == [i == kept for i in range(2)]
    for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_kept), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want) / 2, rtol=1e-10, atol=1e-14)
    # A tolerance above both: every task gives its meta-gradient, as without the test.
    (_, per), grad = loss_and_grad(dataclasses.replace(alg, stationarity_tol=2 * max(norms)), tasks)
    _, grad_all = loss_and_grad(alg, tasks)
    assert per["stationary"].tolist() == [True, True]
    for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_all), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12)


def test_cg_max_gain_caps_each_tasks_imaml_meta_gradient(x64):
    """``cg_max_gain = ρ``: a task's implicit meta-gradient m = λ (H + λI)⁻¹ g is rescaled to
    ``ρ‖g‖`` when longer (g: the query gradient at θ*), per task, so that in a meta-batch only
    the long task's share changes (float64). Away from a minimum (one inner step, weak λ)
    H + λI has small or negative eigenvalues and amplifies g."""
    from metagrad.fewshot import meta_batch_loss

    model, params, task = _tiny_task()
    lam = 0.05
    base = make_algorithm("imaml", steps=1, inner_lr=0.5, proximal=lam, cg_steps=60)
    meta = base.init_meta(params)

    def grad_of(alg, batch):
        fn = lambda m: meta_batch_loss(model, alg, m, batch)[0]  # noqa: E731
        return np.asarray(jax.flatten_util.ravel_pytree(jax.grad(fn)(meta)["params"])[0])

    def gain_of(t):
        """The meta-gradient m of one task and its gain ‖m‖/‖g‖."""
        theta, unravel = jax.flatten_util.ravel_pytree(adapt_task(model, base, meta, t).params)
        g = jax.grad(lambda v: cross_entropy(model.apply(unravel(v), t[2]), t[3]))(theta)
        m = grad_of(base, tuple(a[None] for a in t))
        return m, np.linalg.norm(m) / np.linalg.norm(np.asarray(g))

    # A second task with weak curvature (inputs scaled down): H ≈ 0, m ≈ g, gain ≈ 1.
    small = (0.01 * task[0], task[1], task[2], task[3])
    (m_a, gain_a), (m_b, gain_b) = gain_of(task), gain_of(small)
    assert gain_a > 1.1 * gain_b and gain_a > 1, (gain_a, gain_b)  # only H + λI amplifies
    rho = (gain_a + gain_b) / 2
    capped = dataclasses.replace(base, cg_max_gain=rho)
    np.testing.assert_allclose(grad_of(capped, (tuple(a[None] for a in task))), m_a * rho / gain_a,
                               rtol=1e-9)  # fmt: skip
    # A cap above the gain changes nothing.
    loose = dataclasses.replace(base, cg_max_gain=2 * gain_a)
    np.testing.assert_allclose(grad_of(loose, tuple(a[None] for a in task)), m_a, rtol=1e-12)
    # In a meta-batch of both, only the long task is rescaled: the mean of (capped, untouched).
    pair = tuple(jnp.stack(p) for p in zip(task, small, strict=True))
    np.testing.assert_allclose(grad_of(capped, pair), (m_a * rho / gain_a + m_b) / 2, rtol=1e-9,
                               atol=1e-14)  # fmt: skip


@pytest.mark.parametrize("rule", ["continue", "stop"])
def test_imaml_solve_at_negative_curvature_is_textbook_cg(x64, rule):
    """Away from a minimum (one inner step, a weak proximal term) the proximal Hessian
    ``H + λI`` is indefinite: iMAML's meta-gradient is ``λ x_k`` with ``x_k`` the CG iterate on
    the dense system (float64): after all ``cg_steps`` (``"continue"``) or before the first
    direction with ``pᵀAp ≤ 0`` (``"stop"``)."""
    model, params, task = _tiny_task()
    lam, cg_steps = 0.05, 6
    alg = make_algorithm(
        "imaml", steps=1, inner_lr=0.5, proximal=lam, cg_steps=cg_steps, cg_negative_curvature=rule
    )
    meta = alg.init_meta(params)
    got = jax.grad(lambda m: adapt_task(model, alg, m, task).loss)(meta)
    theta, unravel = jax.flatten_util.ravel_pytree(adapt_task(model, alg, meta, task).params)
    h = jax.hessian(lambda t: cross_entropy(model.apply(unravel(t), task[0]), task[1]))(theta)
    g = jax.grad(lambda t: cross_entropy(model.apply(unravel(t), task[2]), task[3]))(theta)
    a, b = np.asarray(h) + lam * np.eye(theta.size), np.asarray(g)
    iterates, curvatures = _cg_iterates(a, b, cg_steps)
    bad = [k for k, c in enumerate(curvatures) if c <= 0]
    assert bad, curvatures  # the system is indefinite within cg_steps
    x = iterates[-1] if rule == "continue" else (iterates[bad[0] - 1] if bad[0] else b)
    got_flat = np.asarray(jax.flatten_util.ravel_pytree(got["params"])[0])
    np.testing.assert_allclose(got_flat, lam * x, rtol=1e-7, atol=1e-12)


def test_inner_momentum_solves_the_proximal_problem_in_fewer_steps(x64):
    """Heavy-ball momentum reaches the inner minimum that plain GD approaches slowly (the implicit
    meta-gradient assumes it is reached)."""
    model, params, task = _tiny_task()
    x = task[0]
    theta0 = jax.flatten_util.ravel_pytree(params)[0]

    def residual(momentum):
        alg = make_algorithm("imaml", steps=16, inner_lr=0.2, proximal=0.5, inner_momentum=momentum)
        theta, unravel = jax.flatten_util.ravel_pytree(
            adapt_task(model, alg, alg.init_meta(params), task).params
        )
        g = jax.grad(lambda t: cross_entropy(model.apply(unravel(t), x), task[1]))(theta)
        return float(jnp.linalg.norm(g + 0.5 * (theta - theta0)))

    plain, heavy = residual(0.0), residual(0.6)
    assert heavy < 0.2 * plain, (plain, heavy)


def test_imaml_trains_and_resumes_like_the_other_algorithms(tmp_path):
    """``metagrad fewshot train --algorithm imaml``: same checkpoints, metrics and resume."""
    import json

    from metagrad.data import ClassDataset, Splits
    from metagrad.fewshot.training import TrainConfig, read_config, train

    rng = np.random.default_rng(0)

    def ds(n_classes, offset):
        images = rng.integers(0, 255, (n_classes, 6, 8, 8, 1), dtype=np.uint8)
        return ClassDataset.from_grid(images, [f"c{offset + i}" for i in range(n_classes)])

    splits = Splits(ds(6, 0), ds(4, 100), ds(4, 200))
    config = TrainConfig(
        algorithm="imaml", ways=3, shots=1, queries=2, steps=3, inner_lr=0.1, meta_batch=2,
        iterations=4, channels=4, n_blocks=2, val_every=2, val_tasks=2, checkpoint_every=2,
    )  # fmt: skip

    def metrics(path):
        return [
            {k: v for k, v in json.loads(x).items() if k != "time_s"}
            for x in path.read_text().splitlines()
        ]

    train(config, tmp_path / "a", splits=splits, show_progress=False)
    killed = train(config, tmp_path / "b", splits=splits, show_progress=False, stop_after=3)
    assert killed["killed"]
    train(config, tmp_path / "b", splits=splits, show_progress=False)
    a, b = metrics(tmp_path / "a" / "metrics.jsonl"), metrics(tmp_path / "b" / "metrics.jsonl")
    assert a == b and [m["step"] for m in a] == [1, 2, 2, 3, 4, 4]
    assert all(np.isfinite(m["loss"]) for m in a)
    assert read_config(tmp_path / "b") == (config, 4)
    # With a stationarity test, each step logs the fraction of tasks that gave a meta-gradient.
    tested = dataclasses.replace(config, iterations=2, val_every=0, stationarity_tol=1e-6)
    train(tested, tmp_path / "c", splits=splits, show_progress=False)
    logged = [m for m in metrics(tmp_path / "c" / "metrics.jsonl") if m["kind"] == "train"]
    assert [m["stationary"] for m in logged] == [0.0, 0.0]  # 3 inner steps: none that close
    from metagrad.fewshot.report import write_report

    report = write_report(tmp_path / "c").read_text()
    assert "| stationarity_tol | 1e-06 |" in report and "| cg_steps |" not in report
    assert "left out of the meta-gradient (inner loop not stationary): 100.00% over 2" in report


def test_bench_implicit_writes_json_and_png(tmp_path):
    from metagrad.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # CG at T = 2: θ_T is no minimum yet
        code = main(
            ["bench", "implicit", "--quick", "--repeats", "1", "--json", str(tmp_path / "b.json"),
             "--out", str(tmp_path)]
        )  # fmt: skip
    assert code == 0 and (tmp_path / "implicit.png").stat().st_size > 0
    result = __import__("json").loads((tmp_path / "b.json").read_text())
    rows = {(r["strategy"], r["steps"]): r for r in result["rows"]}
    assert set(rows) == {(s, t) for s in ("implicit", "mixflow", "mixflow+sqrt") for t in (2, 4)}
    # the implicit meta-gradient's compiled memory does not depend on T
    assert rows[("implicit", 2)]["temp_mib"] == rows[("implicit", 4)]["temp_mib"]
    assert [a["steps"] for a in result["agreement"]] == [2, 4]


def test_imaml_refuses_lambda_patterns():
    from metagrad.fewshot import Pattern
    from metagrad.fewshot.training import TrainConfig

    with pytest.raises(ValueError, match="all layers adapted at every step"):
        TrainConfig(algorithm="imaml", steps=2, pattern="01/11")
    model = MLP((5, 6, 3))
    alg = make_algorithm("imaml", steps=2)
    meta = alg.init_meta(model.init(jax.random.PRNGKey(0)))
    task = (jnp.zeros((3, 5)), jnp.arange(3), jnp.zeros((3, 5)), jnp.arange(3))
    with pytest.raises(ValueError, match="imaml \\(method='implicit'\\) adapts every layer"):
        adapt_task(model, alg, meta, task, pattern=Pattern.parse("01/11"))


def test_imaml_at_test_time_with_lambda_zero_is_plain_fine_tuning(x64):
    """``fewshot eval --proximal 0``: iMAML's test-time adaptation without the proximal term is
    the unrolled inner loop of MAML with the same steps, learning rate and momentum; with the
    run's λ it is the algorithm itself."""
    from metagrad.fewshot.algorithms import at_test_time

    model, params, task = _tiny_task()
    imaml = make_algorithm("imaml", steps=7, inner_lr=0.2, inner_momentum=0.5, cg_damping=1.0)
    assert at_test_time(imaml) is imaml
    test_time = at_test_time(imaml, proximal=0.0)
    assert (test_time.proximal, test_time.method, test_time.cg_damping) == (0.0, "unroll", 0.0)
    maml = make_algorithm("maml", steps=7, inner_lr=0.2, inner_momentum=0.5)
    got = adapt_task(model, test_time, test_time.init_meta(params), task)
    want = adapt_task(model, maml, maml.init_meta(params), task)
    np.testing.assert_allclose(float(got.loss), float(want.loss), rtol=1e-12)
    proximal = adapt_task(model, imaml, imaml.init_meta(params), task)
    assert abs(float(proximal.loss) - float(want.loss)) > 1e-6  # λ = 2 pulls towards θ₀
