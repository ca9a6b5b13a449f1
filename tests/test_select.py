"""Instance selection (`select(index)`) and set capabilities (`separable`, `diagonal_prox`, `project_jvp`).

Selections are checked against the batch they come from: every quantity of the
selected problem is compared with the full problem's rows by exact equality.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from saddle import problems
import saddle
from saddle import Ball, Box, CappedSimplex, ChiSquareBall, ConstraintSet, Permutahedron, Product, Reals, Simplex
from saddle.selection import as_selection
from saddle.terms import L1, Indicator, Linear, Quadratic, Smooth, Sum, Zero

F64 = torch.float64

# Every registered family, small, with per-instance parameters where the family takes them.
FAMILIES = {
    "bilinear": dict(n=4, batch_size=3, seed=1),
    "comonotone_linear": dict(n=2, batch_size=3, seed=1),
    "dirac_gan": dict(batch_size=3, seed=1),
    "distributed_bilinear": dict(n=4, workers=2, samples=2, batch_size=3, seed=1),
    "distributed_quadratic": dict(n=5, workers=2, batch_size=3, seed=1),
    "distributed_matrix_game": dict(n=4, m=3, workers=2, batch_size=3, seed=1),
    "dro": dict(n=12, d=3, ambiguity="chi2_ball", rho=torch.tensor([0.1, 0.3, 0.5], dtype=F64), batch_size=3,
                seed=1),
    "forsaken": dict(batch_size=3, seed=1),
    "gaussian_mixture_gan": dict(width=8, depth=1, latent_dim=2, n_samples=16, batch_size=3, seed=1),
    "global_forsaken": dict(batch_size=3, seed=1),
    "linear_program": dict(n=6, m_ub=4, m_eq=1, batch_size=3, seed=1),
    "matching_pennies": dict(batch_size=3, seed=1),
    "matrix_game": dict(n=4, m=3, geometry="entropic", batch_size=3, seed=1),
    "quadratic": dict(n=4, m=3, box=0.3, batch_size=3, seed=1),
    "rock_paper_scissors": dict(batch_size=3, seed=1),
    "sharpness": dict(width=4, n_samples=16, micro_batches=2, rho=torch.tensor([0.05, 0.1, 0.2], dtype=F64),
                      batch_size=3, seed=1),
    "xy": dict(batch_size=3, seed=1),
}
INDICES = {
    "int": (1, [1]),
    "negative int": (-1, [2]),
    "slice": (slice(0, 2), [0, 1]),
    "mask": (torch.tensor([True, False, True]), [0, 2]),
    "positions": (torch.tensor([2, 0]), [2, 0]),
    "list": ([1, 0], [1, 0]),
}


def test_every_registered_family_is_covered():
    assert sorted(FAMILIES) == problems.names()


def _rows(t, rows):
    return None if t is None else t[rows] if t.dim() > 0 and t.shape[0] > 1 else t


def _equal(a, b, ulps: int = 0) -> bool:
    """Exact equality of tensors, tuples of them or None; with ``ulps``, up to that many units of round-off."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(u, v, ulps) for u, v in zip(a, b))
    if a.shape != b.shape:
        return False
    if not ulps:
        return torch.equal(a, b)
    return bool(((a - b).abs() <= ulps * torch.finfo(a.dtype).eps * torch.maximum(a.abs(), b.abs())).all())


# The DRO operator's einsum runs a matrix-vector kernel for a batch of one and a batched one otherwise,
# which may round differently in the last bit (docs/design.md, "Batched equals looped").
ULPS = {"dro": 4}


def _point_inside(problem):
    """A point of the domain away from z0, with positive simplex weights (between z0 and a projection)."""
    gen = torch.Generator().manual_seed(0)
    moved = tuple(b + 0.1 * torch.randn(b.shape, dtype=b.dtype, generator=gen) for b in problem.z0)
    return tuple(0.5 * (a + b) for a, b in zip(problem.z0, problem.domain.project(moved)))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_selected_problem_has_the_rows_of_the_batch(name):
    problem = problems.get(name, **FAMILIES[name])
    z = _point_inside(problem)
    Fz, prox = problem.F(z), problem.prox(z, problem.F(z), 0.1)
    gap, ref = problem.duality_gap(z), problem.reference
    L, mu = problem.lipschitz(), problem.strong_monotonicity()
    ulps = ULPS.get(name, 0)
    for label, (index, rows) in INDICES.items():
        picked = problem.select(index)
        assert type(picked) is type(problem) and picked.batch_size == len(rows), label
        zs = tuple(b[rows] for b in z)
        assert _equal(picked.z0, tuple(b[rows] for b in problem.z0)), label
        assert _equal(picked.F(zs), tuple(b[rows] for b in Fz), ulps), label
        assert _equal(picked.prox(zs, picked.F(zs), 0.1), tuple(b[rows] for b in prox), ulps), label
        assert _equal(picked.duality_gap(zs), _rows(gap, rows), ulps), label
        assert _equal(picked.lipschitz(), _rows(L, rows)), label
        assert _equal(picked.strong_monotonicity(), _rows(mu, rows)), label
        if ref is None:
            assert picked.reference is None
        else:
            assert _equal(picked.reference.solution, None if ref.solution is None else
                          tuple(b[rows] for b in ref.solution)), label
            assert _equal(picked.reference.value, _rows(ref.value, rows)), label
        if hasattr(problem, "objective"):
            assert _equal(picked.objective(zs), problem.objective(z)[rows], ulps), label
        assert picked.batch_size == len(rows) and problem.batch_size == 3  # the batch itself is unchanged


def test_selection_of_a_selection_composes():
    problem = problems.get("sharpness", **FAMILIES["sharpness"])  # a closure: evaluated on the full batch
    z = _point_inside(problem)
    twice = problem.select(torch.tensor([2, 0, 1])).select(slice(0, 2))
    assert _equal(twice.F(tuple(b[[2, 0]] for b in z)), tuple(b[[2, 0]] for b in problem.F(z)))


def test_references_not_yet_computed_are_computed_for_the_selection_only():
    problem = problems.get("dro", **FAMILIES["dro"])
    one = problem.select(2)
    assert not problem.has_reference and not one.has_reference
    expected = problem.reference
    assert _equal(one.reference.solution, tuple(b[2:3] for b in expected.solution))
    assert _equal(one.reference.value, expected.value[2:3])


def test_shared_parameters_are_kept_and_per_instance_ones_indexed():
    lo = torch.tensor([[-1.0, -2.0]], dtype=F64)  # (1, n): shared
    hi = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=F64)  # (B, n)
    box = Box(lo, hi).select(torch.tensor([True, False, True]))
    assert box.lo is lo and torch.equal(box.hi, hi[[0, 2]])
    ball = Ball(torch.tensor([1.0, 2.0, 3.0], dtype=F64), 2, groups=2).select(1)
    assert ball.groups == 2 and ball.p == 2 and torch.equal(ball.radius, torch.tensor([2.0], dtype=F64))
    assert Ball(0.5).select(slice(1, 3)).radius == 0.5
    q = Quadratic(torch.rand(3, 4, dtype=F64) + 1, torch.zeros(1, 4, dtype=F64)).select(0)
    assert q.P.shape == (1, 4) and q.c.shape == (1, 4)


@pytest.mark.parametrize("make", [
    lambda r: Box(-r.unsqueeze(-1).expand(3, 4), r.unsqueeze(-1).expand(3, 4)),
    lambda r: Ball(r, 2, groups=2),
    lambda r: Ball(r, 1),
    lambda r: Ball(r, math.inf),
    lambda r: Simplex(),
    lambda r: CappedSimplex(r),
    lambda r: ChiSquareBall(r),
    lambda r: Permutahedron(torch.softmax(torch.arange(12, dtype=F64).reshape(3, 4) * r.unsqueeze(-1), -1)),
    lambda r: Product(Box(-r, r), Ball(r)),
], ids=["box", "ball_groups", "ball_1", "ball_inf", "simplex", "capped_simplex", "chi_square", "permutahedron",
        "product"])
def test_every_set_selects_its_rows(make):
    r = torch.tensor([0.3, 0.5, 0.9], dtype=F64)
    S = make(r)
    u = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    u = (u, 2 * u) if isinstance(S, Product) else u
    full = S.project(u)
    picked = S.select(torch.tensor([2, 0]))
    got = picked.project(tuple(b[[2, 0]] for b in u) if isinstance(S, Product) else u[[2, 0]])
    assert _equal(got, tuple(b[[2, 0]] for b in full) if isinstance(S, Product) else full[[2, 0]])


def test_every_term_selects_its_rows():
    gen = torch.Generator().manual_seed(5)
    w = torch.rand(3, 4, dtype=F64, generator=gen)
    terms = [Zero(), Linear(w), Quadratic(w + 1, w), Quadratic(torch.eye(4, dtype=F64).expand(3, 4, 4) * 2, None),
             L1(w), L1(torch.tensor([0.1, 0.2, 0.3], dtype=F64)), Indicator(Box(-w, w)),
             Smooth(lambda x: (w * x.square()).sum(-1), lipschitz=torch.tensor([1.0, 2.0, 3.0], dtype=F64)),
             Sum(Linear(w), L1(0.5))]
    v = torch.randn(3, 4, dtype=F64, generator=gen)
    X = Box(-0.5, 0.5)
    for term in terms:
        picked = term.select(as_selection(torch.tensor([True, False, True]), 3))
        assert _equal(picked.value(v[[0, 2]]), term.value(v)[[0, 2]]), term
        try:
            expected = term.prox(v, 0.3, Reals() if isinstance(term, Indicator) else X)
        except NotImplementedError:
            continue
        assert _equal(picked.prox(v[[0, 2]], 0.3, Reals() if isinstance(term, Indicator) else X), expected[[0, 2]])


def test_composite_problem_with_functions_selects_exactly():
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(3, 2, 4, dtype=F64, generator=gen)
    c = torch.rand(3, 4, dtype=F64, generator=gen)
    coupling = saddle.SmoothCoupling(lambda x, y: (torch.tanh(A @ x.unsqueeze(-1)).squeeze(-1) * y).sum(-1))
    problem = saddle.CompositeSaddleProblem(coupling, torch.randn(3, 4, dtype=F64, generator=gen),
                                            torch.randn(3, 2, dtype=F64, generator=gen),
                                            g=Sum(Smooth(lambda x: (c * x.square()).sum(-1)), L1(c)),
                                            h=Quadratic(torch.ones(1, 2, dtype=F64)), X=Box(-c, c))
    z = problem.z0
    picked = problem.select([2, 1])
    assert _equal(picked.F(tuple(b[[2, 1]] for b in z)), tuple(b[[2, 1]] for b in problem.F(z)))
    step = problem.prox(z, problem.F(z), 0.2)
    assert _equal(picked.prox(tuple(b[[2, 1]] for b in z), picked.F(tuple(b[[2, 1]] for b in z)), 0.2),
                  tuple(b[[2, 1]] for b in step))
    assert picked.selectable  # the closures inside the coupling and g are evaluated, but not the whole problem


def test_opaque_operators_are_evaluated_on_the_full_batch():
    M = torch.randn(3, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    seen = []

    def F(z):
        seen.append(z[0].shape[0])
        return ((M @ z[0].unsqueeze(-1)).squeeze(-1),)

    problem = saddle.VIProblem(F, Reals(), torch.ones(3, 2, dtype=F64))
    assert not problem.selectable
    picked = problem.select(torch.tensor([False, True, False]))
    z = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    seen.clear()
    assert _equal(picked.F((z[1:2],)), (problem.F((z,))[0][1:2],))
    assert seen == [3, 3]  # the selection evaluates the whole batch

    class Selectable:  # a function that selects its own data is used as such
        def __init__(self, M):
            self.M = M

        def __call__(self, z):
            seen.append(z[0].shape[0])
            return ((self.M @ z[0].unsqueeze(-1)).squeeze(-1),)

        def select(self, index):
            return Selectable(self.M[as_selection(index).index])

    problem = saddle.VIProblem(Selectable(M), Reals(), torch.ones(3, 2, dtype=F64))
    assert problem.selectable
    seen.clear()
    assert _equal(problem.select(1).F((z[1:2],)), (F((z,))[0][1:2],)) and seen[0] == 1


@pytest.mark.parametrize("index,error,match", [
    (torch.tensor([False, False, False]), ValueError, "no instance"),
    (slice(2, 2), ValueError, "no instance"),
    ([], ValueError, "no instance"),
    (3, ValueError, "out of range"),
    (torch.tensor([0, 5]), ValueError, "out of range"),
    (torch.tensor([1, 0, 1]), ValueError, "repeats"),
    (torch.tensor([True, False]), ValueError, r"shape \(B,\) = \(3,\)"),
    (torch.tensor([[0]]), ValueError, "1-D"),
    (torch.tensor([0.5]), TypeError, "integers or booleans"),
    (True, TypeError, "bool"),
    ("0", TypeError, "int, a slice"),
])
def test_bad_selections_are_named(index, error, match):
    with pytest.raises(error, match=match):
        problems.get("bilinear", **FAMILIES["bilinear"]).select(index)


def test_a_set_with_per_instance_data_and_no_select_is_named():
    class Shifted(ConstraintSet):
        def __init__(self, shift):
            self.shift = shift

        def project(self, u):
            return u + 0 * self.shift

    problem = saddle.VIProblem(lambda z: z, Shifted(torch.zeros(3, 2, dtype=F64)), torch.ones(3, 2, dtype=F64))
    with pytest.raises(TypeError, match="Shifted holds the per-instance tensor shift"):
        problem.select(0)


# -- solving a selection -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,solver", [("matrix_game", "mirror_prox"), ("quadratic", "extragradient"),
                                         ("linear_program", "pdhg"), ("sharpness", "sam"),
                                         ("comonotone_linear", "eg_plus")])
def test_solving_a_selection_gives_the_selected_rows_of_the_batched_solve(name, solver):
    problem = problems.get(name, **FAMILIES[name])
    batched = saddle.solve(problem, solver, tol=0.0, max_iters=40)
    for index, rows in (INDICES["mask"], INDICES["positions"]):
        alone = saddle.solve(problem.select(index), solver, tol=0.0, max_iters=40)
        for a, b in zip(batched.z, alone.z):
            assert torch.equal(a[rows], b), (name, rows)
        assert torch.equal(batched.operator_calls[rows], alone.operator_calls)


def test_dro_instance_is_a_deprecated_alias_of_select():
    problem = problems.get("dro", **FAMILIES["dro"])
    with pytest.warns(DeprecationWarning, match="select"):
        one = problem.instance(1)
    z = _point_inside(problem)
    assert _equal(one.F(tuple(b[1:2] for b in z)), tuple(b[1:2] for b in problem.F(z)), ULPS["dro"])


# -- capabilities ------------------------------------------------------------------------------------

class ScratchBox(ConstraintSet):
    """A box written from scratch (no saddle set inherited), declaring the capabilities PDHG asks for."""

    separable = True
    diagonal_prox = True

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi
        self.bounded = bool(torch.isfinite(torch.as_tensor(lo)).all() and torch.isfinite(torch.as_tensor(hi)).all())

    def project(self, u):
        return torch.minimum(torch.maximum(u, torch.as_tensor(self.lo, dtype=u.dtype)),
                             torch.as_tensor(self.hi, dtype=u.dtype))

    def lmo(self, g):
        lo, hi = (torch.as_tensor(t, dtype=g.dtype).expand_as(g) for t in (self.lo, self.hi))
        return torch.where(g > 0, lo, hi)

    def support(self, v):
        return (v * self.lmo(-v)).sum(-1)


def test_a_users_set_with_capabilities_runs_pdhg_with_preconditioning_like_box():
    lp = problems.get("linear_program", **FAMILIES["linear_program"])
    X, Y = lp.domain
    mine = saddle.BilinearProblem(lp.K, *lp.z0, g=lp.g, h_conj=lp.h_conj, X=ScratchBox(X.lo, X.hi),
                                  Y=ScratchBox(Y.lo, Y.hi))
    box = saddle.BilinearProblem(lp.K, *lp.z0, g=lp.g, h_conj=lp.h_conj, X=X, Y=Y)
    solver = saddle.PDHG(precondition=True, restart_every=8)
    z, s = box.z0, solver.init(box, box.z0)
    w, t = mine.z0, solver.init(mine, mine.z0)
    assert s.col_scale is not None and torch.equal(s.col_scale, t.col_scale)
    for _ in range(40):
        z, s = solver.step(box, z, s)
        w, t = solver.step(mine, w, t)
        assert torch.equal(z[0], w[0]) and torch.equal(z[1], w[1])
    assert torch.equal(solver.terminal_status(box, z, s), solver.terminal_status(mine, w, t))


def test_without_the_capability_pdhg_refuses_preconditioning():
    class Undeclared(ScratchBox):
        diagonal_prox = False

    lp = problems.get("linear_program", **FAMILIES["linear_program"])
    X, Y = lp.domain
    problem = saddle.BilinearProblem(lp.K, *lp.z0, g=lp.g, h_conj=lp.h_conj, X=Undeclared(X.lo, X.hi), Y=Y)
    with pytest.raises(ValueError, match="precondition=True"):
        saddle.solve(problem, saddle.PDHG(precondition=True), max_iters=1)


def test_capabilities_of_the_library_sets():
    assert Reals().unconstrained and Reals().separable and Reals().diagonal_prox
    assert Box().separable and Box().diagonal_prox and not Box().unconstrained
    for S in (Ball(), Simplex(), CappedSimplex(0.5), ChiSquareBall(0.1)):
        assert not (S.separable or S.diagonal_prox or S.unconstrained)
    assert Simplex("entropic").geometry == "entropic"
    assert Quadratic(torch.ones(1, 2)).separable and not Quadratic(torch.ones(1, 2, 2)).separable
    assert Zero().linear and Linear(torch.ones(1, 2)).linear and not L1().linear and L1().separable


JVP_SETS = {
    "reals": Reals(),
    "box": Box(torch.tensor([[-0.5, -1.0, 0.0, -0.2, -2.0, -0.1]], dtype=F64), 0.4),
    "ball2": Ball(torch.tensor([0.5, 1.5, 0.3], dtype=F64)),
    "ball2_groups": Ball(0.4, 2, groups=2),
    "ball_inf": Ball(torch.tensor([0.5, 1.5, 0.3], dtype=F64), math.inf),
    "simplex": Simplex(),
    "simplex_entropic": Simplex("entropic"),  # the Euclidean projection's derivative, whatever the geometry
}


@pytest.mark.parametrize("name", sorted(JVP_SETS))
def test_project_jvp_matches_central_differences(name):
    S = JVP_SETS[name]
    gen = torch.Generator().manual_seed(7)
    u = torch.randn(3, 6, dtype=F64, generator=gen)
    v = torch.randn(3, 6, dtype=F64, generator=gen)
    h = 1e-6
    fd = (S.project(u + h * v) - S.project(u - h * v)) / (2 * h)
    torch.testing.assert_close(S.project_jvp(u, v), fd, rtol=0, atol=1e-7)


def test_product_project_jvp_is_blockwise_and_others_say_so():
    S = Product(Box(-0.3, 0.3), Ball(0.5))
    gen = torch.Generator().manual_seed(8)
    u, v = (tuple(torch.randn(2, 4, dtype=F64, generator=gen) for _ in range(2)) for _ in range(2))
    got = S.project_jvp(u, v)
    for Si, a, b, g in zip(S, u, v, got):
        assert torch.equal(g, Si.project_jvp(a, b))
    for other in (Ball(1.0, 1), ChiSquareBall(0.1), Permutahedron(torch.full((4,), 0.25))):
        with pytest.raises(NotImplementedError, match=type(other).__name__):
            other.project_jvp(u[0], v[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert saddle.sets.CappedSimplex is saddle.dro_sets.CappedSimplex is saddle.CappedSimplex
