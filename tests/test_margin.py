"""companion.margin: agreement with pytorch-metric-learning and naive formulas, psi's properties,
gradcheck, finiteness at cos = +-1 and in bfloat16, the lambda schedule, bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from pytorch_metric_learning import losses as pml
from torch import Tensor

from companion import margin as M
from tests.conftest import LOW_PRECISION, assert_finite

# pytorch-metric-learning 2.9.0 builds its binomial table with a NumPy 2 deprecation
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")

B, D, C = 12, 6, 9
F64 = torch.float64


def _data(seed: int = 0, dtype: torch.dtype = F64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=F64).to(dtype)
    y = torch.randint(0, C, (B,), generator=g)
    return x, y


# ------------------------------------------------------------------------------------------
# naive reference formulas, written from the papers with acos (fine away from cos = +-1)
# ------------------------------------------------------------------------------------------


def naive_psi(cos: Tensor, m: float) -> Tensor:
    theta = torch.acos(cos.clamp(-1, 1))
    k = torch.floor(theta * m / math.pi).clamp(0, math.ceil(m) - 1)
    return (-1) ** k * torch.cos(m * theta) - 2 * k


def naive_arc(cos: Tensor, m: float) -> Tensor:
    theta = torch.acos(cos.clamp(-1, 1))
    return torch.where(theta + m <= math.pi, torch.cos(theta + m), cos - m * math.sin(m))


def naive_loss(logits: Tensor, target: Tensor, target_logit: Tensor) -> Tensor:
    """-log softmax at the target, the target logit replaced; one row at a time."""
    rows = []
    for i in range(logits.shape[0]):
        row = logits[i].clone()
        row[target[i]] = target_logit[i]
        rows.append(torch.logsumexp(row, 0) - row[target[i]])
    return torch.stack(rows)


def naive_head_loss(name: str, x: Tensor, w: Tensor, y: Tensor, **kw: float) -> Tensor:
    rows = torch.arange(len(y))
    xn, wn = x.norm(dim=1), w.norm(dim=1)
    cos = (x @ w.t()) / (xn[:, None] * wn[None, :])
    ct = cos[rows, y]
    if name == "lsoftmax":
        lam = kw.get("lambda_", 0.0)
        norms = xn[:, None] * wn[None, :]
        psi = (naive_psi(ct, kw["margin"]) + lam * ct) / (1 + lam)
        return naive_loss(norms * cos, y, norms[rows, y] * psi)
    if name == "asoftmax":
        lam = kw.get("lambda_", 0.0)
        psi = (naive_psi(ct, kw["margin"]) + lam * ct) / (1 + lam)
        return naive_loss(xn[:, None] * cos, y, xn * psi)
    s = kw["scale"]
    if name == "amsoftmax":
        return naive_loss(s * cos, y, s * (ct - kw["margin"]))
    return naive_loss(s * cos, y, s * naive_arc(ct, kw["margin"]))


HEADS: dict[str, Callable[..., M.MarginHead]] = {
    "lsoftmax": lambda **kw: M.LSoftmaxLoss(D, C, schedule=None, dtype=F64, **kw),
    "asoftmax": lambda **kw: M.ASoftmaxLoss(D, C, schedule=None, dtype=F64, **kw),
    "amsoftmax": lambda **kw: M.AMSoftmaxLoss(D, C, dtype=F64, **kw),
    "arcface": lambda **kw: M.ArcFaceLoss(D, C, dtype=F64, **kw),
}
DEFAULTS: dict[str, dict[str, float]] = {
    "lsoftmax": {"margin": 4},
    "asoftmax": {"margin": 4},
    "amsoftmax": {"margin": 0.35, "scale": 30.0},
    "arcface": {"margin": 0.5, "scale": 64.0},
}


def make_pml(name: str, kw: dict[str, float]) -> pml.LargeMarginSoftmaxLoss:
    if name == "lsoftmax":
        return pml.LargeMarginSoftmaxLoss(num_classes=C, embedding_size=D, margin=kw["margin"])
    if name == "asoftmax":
        return pml.SphereFaceLoss(num_classes=C, embedding_size=D, margin=kw["margin"])
    if name == "amsoftmax":
        return pml.CosFaceLoss(
            num_classes=C, embedding_size=D, margin=kw["margin"], scale=kw["scale"]
        )
    return pml.ArcFaceLoss(
        num_classes=C, embedding_size=D, margin=math.degrees(kw["margin"]), scale=kw["scale"]
    )


def loss_and_grads(head: torch.nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    x = x.clone().requires_grad_(True)
    loss = head(x, y)
    params = [p for p in head.parameters()]
    gx, gw = torch.autograd.grad(loss, [x, *params])
    return loss.detach(), gx, gw


# ------------------------------------------------------------------------------------------
# agreement with pytorch-metric-learning (their W is (D, C): the transpose of ours; their
# ArcFace margin is in degrees; L-Softmax / SphereFace margins are integers there)
# ------------------------------------------------------------------------------------------

PML_CASES = [
    ("lsoftmax", {"margin": 1}),
    ("lsoftmax", {"margin": 2}),
    ("lsoftmax", {"margin": 3}),
    ("lsoftmax", {"margin": 4}),
    ("lsoftmax", {"margin": 6}),
    ("asoftmax", {"margin": 2}),
    ("asoftmax", {"margin": 4}),
    ("amsoftmax", {"margin": 0.35, "scale": 30.0}),
    ("amsoftmax", {"margin": 0.1, "scale": 5.0}),
    ("arcface", {"margin": 0.5, "scale": 64.0}),
    ("arcface", {"margin": 1.2, "scale": 8.0}),  # large margin: the fallback branch is hit
]


@pytest.mark.parametrize(("name", "kw"), PML_CASES)
def test_agrees_with_pytorch_metric_learning(name: str, kw: dict[str, float]) -> None:
    x, y = _data(1)
    torch.manual_seed(0)  # the head's initial weights: fixed, so the fallback check below holds
    ours = HEADS[name](**kw)
    theirs = make_pml(name, kw)
    theirs.W.data = ours.weight.detach().t().clone()
    la, gxa, gwa = loss_and_grads(ours, x, y)
    lb, gxb, gwb = loss_and_grads(theirs, x, y)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gxa, gxb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gwa, gwb.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.logits(x), theirs.get_logits(x), rtol=1e-5, atol=1e-5)
    if name == "arcface" and kw["margin"] > 1:
        cos = F.normalize(x, dim=1) @ F.normalize(ours.weight, dim=1).t()
        assert (cos[torch.arange(B), y] < -math.cos(kw["margin"])).any()  # fallback exercised


def test_non_integer_margin_is_truncated_by_pml_but_not_here() -> None:
    """Deliberate difference: pytorch-metric-learning runs int(margin); we use the real m."""
    x, y = _data(2)
    theirs = pml.LargeMarginSoftmaxLoss(num_classes=C, embedding_size=D, margin=2.5)
    for m, same in ((2, True), (2.5, False)):
        ours = M.LSoftmaxLoss(D, C, margin=m, schedule=None, dtype=F64)
        theirs.W.data = ours.weight.detach().t().clone()
        assert torch.allclose(ours(x, y), theirs(x, y), rtol=1e-10) is same


def test_pml_arcface_gradient_is_nan_at_cos_one_and_ours_is_finite() -> None:
    """Deliberate difference: acos' is infinite at 1; our sin-based form stays finite."""
    w = torch.cat([torch.eye(D, dtype=F64), torch.ones(C - D, D, dtype=F64)])
    x = w[:4].clone() * 3.0  # each feature exactly on its class weight: cos = 1
    y = torch.arange(4)
    ours = M.ArcFaceLoss(D, C, dtype=F64)
    ours.weight.data = w.clone()
    theirs = make_pml("arcface", DEFAULTS["arcface"])
    theirs.W.data = w.t().clone()
    _, gx_ours, gw_ours = loss_and_grads(ours, x, y)
    _, gx_theirs, _ = loss_and_grads(theirs, x, y)
    assert_finite(gx_ours, gw_ours)
    assert not torch.isfinite(gx_theirs).all()


# ------------------------------------------------------------------------------------------
# agreement with the naive formulas (including the lambda blend, which pml does not have)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HEADS))
@given(
    seed=st.integers(0, 10_000),
    margin=st.sampled_from([1.0, 2.0, 3.0, 4.0, 1.5, 2.5, 3.7]),
    lam=st.sampled_from([0.0, 0.3, 5.0]),
)
def test_modules_agree_with_naive_formula(name: str, seed: int, margin: float, lam: float) -> None:
    x, y = _data(seed)
    if name in ("lsoftmax", "asoftmax"):
        kw: dict[str, float] = {"margin": margin}
        head = HEADS[name](**kw)
        head.schedule = M.LambdaSchedule(base=lam, gamma=0.0, lambda_min=0.0)
        kw["lambda_"] = lam
    elif name == "amsoftmax":
        kw = {"margin": margin / 10, "scale": 16.0}
        head = HEADS[name](**kw)
    else:
        kw = {"margin": margin / 4, "scale": 16.0}
        head = HEADS[name](**kw)
    w = head.weight.detach().clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    want = naive_head_loss(name, xr, w, y, **kw).mean()
    gx_want, gw_want = torch.autograd.grad(want, [xr, w])
    got, gx, gw = loss_and_grads(head, x, y)
    torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx, gx_want, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gw, gw_want, rtol=1e-7, atol=1e-9)


def test_functional_forms_equal_the_modules() -> None:
    x, y = _data(3)
    rows = torch.arange(B)
    for name, head in ((n, HEADS[n](**DEFAULTS[n])) for n in HEADS):
        w = head.weight.detach()
        cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
        if name == "lsoftmax":
            got = M.large_margin_softmax_loss(
                x @ w.t(), y, x.norm(dim=1) * w[y].norm(dim=1), margin=4
            )
        elif name == "asoftmax":
            got = M.angular_softmax_loss(cos, y, x.norm(dim=1), margin=4)
        elif name == "amsoftmax":
            got = M.additive_margin_softmax_loss(cos, y, margin=0.35, scale=30.0)
        else:
            got = M.additive_angular_margin_loss(cos, y, margin=0.5, scale=64.0)
        torch.testing.assert_close(got, head(x, y).detach(), rtol=1e-12, atol=1e-12)
        assert cos[rows, y].abs().max() <= 1  # sanity of the fixture


def test_functional_forms_do_not_modify_their_inputs() -> None:
    x, y = _data(4)
    w = torch.randn(C, D, dtype=F64)
    logits = x @ w.t()
    before = logits.clone()
    M.large_margin_softmax_loss(logits, y, x.norm(dim=1) * w[y].norm(dim=1))
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
    cos_before = cos.clone()
    M.additive_angular_margin_loss(cos, y)
    M.additive_margin_softmax_loss(cos, y)
    M.angular_softmax_loss(cos, y, x.norm(dim=1))
    assert torch.equal(logits, before) and torch.equal(cos, cos_before)


# ------------------------------------------------------------------------------------------
# psi and the ArcFace target function
# ------------------------------------------------------------------------------------------

THETA = torch.linspace(0, math.pi, 20_001, dtype=F64)


@given(margin=st.one_of(st.integers(1, 8).map(float), st.floats(1.0, 8.0)))
def test_psi_is_continuous_decreasing_and_below_cos(margin: float) -> None:
    psi = M.multiplicative_angular_margin(torch.cos(THETA), margin)
    steps = psi.diff()
    assert (steps <= 1e-12).all()  # decreasing
    assert steps.abs().max() < 2 * margin * (THETA[1] - THETA[0]) + 1e-9  # no jumps
    assert (psi <= torch.cos(THETA) + 1e-12).all()  # the margin never helps the target
    assert abs(float(psi[0]) - 1) < 1e-12
    head = THETA <= math.pi / margin
    torch.testing.assert_close(psi[head], torch.cos(margin * THETA[head]), rtol=0, atol=1e-9)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7])
def test_psi_integer_margin_properties(m: int) -> None:
    cos = torch.cos(THETA)
    psi = M.multiplicative_angular_margin(cos, m)
    torch.testing.assert_close(psi, naive_psi(cos, m), rtol=0, atol=1e-9)
    assert abs(float(psi[-1]) - (1 - 2 * m)) < 1e-9
    # point symmetry about (pi/2, 1 - m): psi(pi - theta) + psi(theta) = 2 - 2m
    torch.testing.assert_close(
        psi + psi.flip(0), torch.full_like(psi, 2.0 - 2 * m), atol=1e-9, rtol=0
    )


def test_psi_non_integer_margin_matches_the_angle_formula() -> None:
    cos = torch.cos(THETA[1:-1])
    for m in (1.5, 2.5, 3.7):
        torch.testing.assert_close(
            M.multiplicative_angular_margin(cos, m), naive_psi(cos, m), rtol=0, atol=1e-9
        )


def test_arc_margin_and_its_fallback() -> None:
    m = 0.5
    cos = torch.cos(THETA)
    phi = M.additive_angular_margin(cos, m)
    torch.testing.assert_close(phi, naive_arc(cos, m), rtol=0, atol=1e-12)
    assert (phi.diff() <= 1e-12).all()  # decreasing, thanks to the fallback
    raw = torch.cos(THETA + m)
    assert (raw.diff() > 0).any()  # without it, cos(theta + m) turns back up past pi - m
    jumps = phi.diff().abs()
    assert abs(float(jumps.max()) - (math.cos(m) + m * math.sin(m) - 1)) < 1e-3


# ------------------------------------------------------------------------------------------
# gradients: gradcheck, and finiteness at cos = +-1 exactly
# ------------------------------------------------------------------------------------------


def test_gradcheck_functional_forms() -> None:
    g = torch.Generator().manual_seed(5)
    cos = (torch.rand(4, 5, generator=g, dtype=F64) * 1.6 - 0.75).requires_grad_(True)
    y = torch.tensor([0, 2, 4, 1])
    norm = (torch.rand(4, generator=g, dtype=F64) + 0.5).requires_grad_(True)
    logits = (cos.detach() * norm.detach()[:, None]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: M.additive_margin_softmax_loss(c, y), (cos,))
    assert torch.autograd.gradcheck(
        lambda c: M.additive_angular_margin_loss(c, y, scale=4.0, reduction="none"), (cos,)
    )
    # the fallback branch: target cosines below -cos(m)
    far = torch.full((4, 5), 0.1, dtype=F64)
    far[torch.arange(4), y] = torch.tensor([-0.95, -0.97, -0.99, -0.93], dtype=F64)
    assert torch.autograd.gradcheck(
        lambda c: M.additive_angular_margin_loss(c, y, scale=4.0), (far.requires_grad_(),)
    )
    for m in (2, 3, 4, 2.5):
        assert torch.autograd.gradcheck(
            lambda c, n, m=m: M.angular_softmax_loss(c, y, n, margin=m, lambda_=0.5), (cos, norm)
        )
        assert torch.autograd.gradcheck(
            lambda z, n, m=m: M.large_margin_softmax_loss(z, y, n, margin=m), (logits, norm)
        )


@pytest.mark.parametrize("name", list(HEADS))
def test_gradcheck_modules(name: str) -> None:
    head = HEADS[name](**DEFAULTS[name])
    if name in ("amsoftmax", "arcface"):
        head.scale = 4.0
    x, y = _data(6)
    x = x[:4].clone().requires_grad_(True)
    w = head.weight.detach().clone().requires_grad_(True)

    def loss(f: Tensor, weight: Tensor) -> Tensor:
        return torch.func.functional_call(head, {"weight": weight}, (f, y[:4]))

    assert torch.autograd.gradcheck(loss, (x, w))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 1.5, 2.5])
def test_target_functions_have_finite_gradients_at_plus_minus_one(m: float) -> None:
    for dtype in (F64, *LOW_PRECISION):
        c = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=dtype, requires_grad=True)
        (g,) = torch.autograd.grad(M.multiplicative_angular_margin(c, m).sum(), c)
        assert_finite(g)
        (g,) = torch.autograd.grad(M.additive_angular_margin(c, m / 4).sum(), c)
        assert_finite(g)
    if float(m).is_integer():  # integer m: the exact derivative m^2 at cos = 1
        c = torch.tensor([1.0], dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(M.multiplicative_angular_margin(c, m).sum(), c)
        assert abs(float(g) - m * m) < 1e-9


@pytest.mark.parametrize("dtype", [F64, *LOW_PRECISION])
@pytest.mark.parametrize("name", list(HEADS))
def test_modules_finite_when_features_lie_on_or_opposite_class_weights(
    name: str, dtype: torch.dtype
) -> None:
    head = HEADS[name](**DEFAULTS[name]).to(dtype)
    w = torch.cat([torch.eye(D), torch.ones(C - D, D)]).to(dtype)
    head.weight.data = w.clone()
    # cos = +1 for rows 0-2, cos = -1 for rows 3-5 (exactly, with basis vectors); huge norms
    x = torch.cat([w[:3] * 3.0, -w[3:6] * 1e4])
    y = torch.arange(6)
    x.requires_grad_(True)
    loss = head(x, y)
    gx, gw = torch.autograd.grad(loss, [x, head.weight])
    assert loss.dtype == dtype
    assert_finite(loss, gx, gw)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", list(HEADS))
def test_low_precision_close_to_float64(name: str, dtype: torch.dtype) -> None:
    head = HEADS[name](**DEFAULTS[name])
    x, y = _data(7)
    want = head(x, y).detach()
    low = HEADS[name](**DEFAULTS[name]).to(dtype)
    low.weight.data = head.weight.detach().to(dtype)
    got = low(x.to(dtype), y)
    assert got.dtype == dtype
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_functional_forms_in_low_precision(dtype: torch.dtype) -> None:
    x, y = _data(12)
    w = torch.randn(C, D, dtype=F64, generator=torch.Generator().manual_seed(12))
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
    norm = x.norm(dim=1)
    calls: list[Callable[[Tensor, Tensor], Tensor]] = [
        lambda c, n: M.additive_margin_softmax_loss(c, y),
        lambda c, n: M.additive_angular_margin_loss(c, y),
        lambda c, n: M.angular_softmax_loss(c, y, n),
        lambda c, n: M.angular_softmax_loss(c, y, n, margin=2.5),
        lambda c, n: M.large_margin_softmax_loss(c * n[:, None], y, n),
    ]
    for call in calls:
        want = call(cos, norm)
        c = cos.to(dtype).requires_grad_(True)
        got = call(c, norm.to(dtype))
        (g,) = torch.autograd.grad(got, c)
        assert got.dtype == dtype and g.dtype == dtype
        assert_finite(got, g)
        torch.testing.assert_close(got.double(), want, rtol=5e-2, atol=5e-2)
    empty = M.multiplicative_angular_margin(torch.zeros(0, dtype=dtype))
    assert empty.shape == (0,) and empty.dtype == dtype


def test_amsoftmax_and_arcface_gradients_are_tangent_to_the_features() -> None:
    """Normalised heads depend on angles only: no gradient along the feature itself."""
    x, y = _data(8)
    for name in ("amsoftmax", "arcface"):
        _, gx, _ = loss_and_grads(HEADS[name](**DEFAULTS[name]), x, y)
        radial = (gx * x).sum(dim=1)
        assert radial.abs().max() < 1e-12


# ------------------------------------------------------------------------------------------
# reductions, the margin makes the loss larger, inference logits
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HEADS))
def test_margin_loss_is_at_least_plain_cross_entropy_of_the_inference_logits(name: str) -> None:
    x, y = _data(10)
    head = HEADS[name](reduction="none", **DEFAULTS[name])
    plain = F.cross_entropy(head.logits(x), y, reduction="none")
    assert (head(x, y) >= plain - 1e-12).all()
    assert head.logits(x).shape == (B, C)


# ------------------------------------------------------------------------------------------
# the lambda schedule
# ------------------------------------------------------------------------------------------


def test_lambda_schedule_formula_and_presets() -> None:
    s = M.SPHEREFACE_SCHEDULE
    assert s(0) == 1000.0
    assert s(10) == pytest.approx(1000 / 2.2)
    assert s(10_000) == 5.0  # clipped at lambda_min
    lso = M.LSOFTMAX_SCHEDULE
    assert lso(1000) == pytest.approx(1000 * (1 + 2.5e-5 * 1000) ** -35)
    assert M.LambdaSchedule(base=2.0, gamma=0.0, lambda_min=0.0)(123) == 2.0


def test_step_advances_lambda_and_is_saved() -> None:
    head = M.ASoftmaxLoss(D, C, dtype=F64)
    assert head.lambda_ == 1000.0
    x, y = _data(3)
    for _ in range(10):
        head(x, y).backward()
        head.step()  # one training step
    with torch.no_grad():
        head(x, y)  # forward passes never advance it
    head.eval()
    head(x, y)
    assert head.iteration == 10 and head.lambda_ == pytest.approx(1000 / 2.2)
    # the blend used is the schedule's value at the current iteration
    lam = head.lambda_
    head.train()
    want = M.angular_softmax_loss(head.cosine(x), y, torch.linalg.vector_norm(x, dim=1), 4, lam)
    torch.testing.assert_close(head(x, y), want, rtol=1e-12, atol=1e-12)
    head.step()
    other = M.ASoftmaxLoss(D, C, dtype=F64)
    other.load_state_dict(head.state_dict())
    assert other.iteration == 11
    assert M.ASoftmaxLoss(D, C, schedule=None).lambda_ == 0.0
    assert "margin=4" in repr(head)


def test_large_lambda_is_plain_softmax_and_zero_lambda_is_the_margin() -> None:
    x, y = _data(11)
    head = M.LSoftmaxLoss(D, C, schedule=M.LambdaSchedule(base=1e9, gamma=0.0), dtype=F64)
    plain = F.cross_entropy(head.logits(x), y)
    torch.testing.assert_close(head(x, y).detach(), plain.detach(), rtol=1e-7, atol=1e-7)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def _module_cases() -> list[tuple[Callable[[], object], type[Exception], str]]:
    head = M.ArcFaceLoss(D, C)
    x = torch.randn(B, D)
    y = torch.randint(0, C, (B,))
    return [
        (lambda: head([[1.0]], y), TypeError, r"features must be a torch.Tensor, got list"),
        (lambda: head(x.long(), y), TypeError, r"features must be a floating-point tensor"),
        (lambda: head(x[0], y), ValueError, r"features must have 2 dimension\(s\), got 1"),
        (lambda: head(x[:, :4], y), ValueError, r"features must have shape \(batch, 6\)"),
        (lambda: head(x.double(), y), TypeError, r"features must have the same dtype as weight"),
        (
            lambda: head(torch.full((B, D), float("nan")), y),
            ValueError,
            r"features contains NaN",
        ),
        (
            lambda: head(torch.full((B, D), float("inf")), y),
            ValueError,
            r"features must be finite",
        ),
        (lambda: head(x, y.float()), TypeError, r"target must hold integer class indices"),
        (lambda: head(x, y[:5]), ValueError, r"features and target must have the same batch"),
        (lambda: head(x, y + C), ValueError, r"target must hold class indices in \[0, 8\]"),
        (lambda: head(x, y[:, None]), ValueError, r"target must have shape \(12,\)"),
        (lambda: M.ArcFaceLoss(D, C, margin=3.5), ValueError, r"margin must be an angle"),
        (lambda: M.ArcFaceLoss(D, C, margin=-0.1), ValueError, r"margin must be an angle"),
        (lambda: M.AMSoftmaxLoss(D, C, scale=0.0), ValueError, r"scale must be a finite positive"),
        (
            lambda: M.AMSoftmaxLoss(D, C, margin=-1),
            ValueError,
            r"margin must be a finite non-negative",
        ),
        (lambda: M.LSoftmaxLoss(D, C, margin=0.5), ValueError, r"margin must be at least 1"),
        (lambda: M.LSoftmaxLoss(D, C, margin="4"), TypeError, r"margin must be a real number"),
        (lambda: M.LSoftmaxLoss(D, C, margin=True), TypeError, r"margin must be a real number"),
        (lambda: M.LSoftmaxLoss(D, C, schedule=5.0), TypeError, r"schedule must be a Lambda"),
        (lambda: M.ASoftmaxLoss(0, C), ValueError, r"in_features must be at least 1"),
        (lambda: M.ASoftmaxLoss(D, 1), ValueError, r"num_classes must be at least 2"),
        (lambda: M.AMSoftmaxLoss(D, C, reduction="avg"), ValueError, r"reduction must be one"),
        (lambda: M.LambdaSchedule(gamma=-1.0), ValueError, r"gamma must be a finite non-negative"),
        (lambda: M.SPHEREFACE_SCHEDULE(-1), ValueError, r"iteration must be at least 0"),
        (lambda: M.SPHEREFACE_SCHEDULE(1.5), TypeError, r"iteration must be an int"),
    ]


def _functional_cases() -> list[tuple[Callable[[], object], type[Exception], str]]:
    x = torch.randn(B, D)
    w = torch.randn(C, D)
    y = torch.randint(0, C, (B,))
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
    logits = x @ w.t()
    norm = x.norm(dim=1) * w[y].norm(dim=1)
    return [
        (
            lambda: M.additive_margin_softmax_loss(logits * 10, y),
            ValueError,
            r"input must hold cosines in \[-1, 1\]",
        ),
        (lambda: M.additive_angular_margin_loss(cos[0], y), ValueError, r"input must have 2"),
        (lambda: M.additive_angular_margin_loss(cos, y, reduction="x"), ValueError, "reduction"),
        (
            lambda: M.large_margin_softmax_loss(logits, y, norm / 10),
            ValueError,
            r"input at the target \(a logit\) must not exceed target_norm",
        ),
        (
            lambda: M.large_margin_softmax_loss(logits, y, -norm),
            ValueError,
            r"target_norm must hold products of norms",
        ),
        (
            lambda: M.large_margin_softmax_loss(logits, y, norm[:3]),
            ValueError,
            r"target_norm must have shape \(12,\)",
        ),
        (
            lambda: M.large_margin_softmax_loss(logits, y, norm.double()),
            TypeError,
            r"target_norm must have the same dtype as input",
        ),
        (
            lambda: M.large_margin_softmax_loss(logits, y, norm, lambda_=-1.0),
            ValueError,
            r"lambda_ must be a finite non-negative",
        ),
        (
            lambda: M.angular_softmax_loss(cos, y, x.norm(dim=1), margin=float("inf")),
            ValueError,
            r"margin must be a finite number",
        ),
        (
            lambda: M.angular_softmax_loss(cos, y.double(), x.norm(dim=1)),
            TypeError,
            r"target must hold integer class indices",
        ),
        (
            lambda: M.multiplicative_angular_margin(torch.tensor([1.5]), 2),
            ValueError,
            r"cosine must hold cosines",
        ),
        (
            lambda: M.additive_angular_margin(torch.tensor([1, 0]), 0.5),
            TypeError,
            r"cosine must be a floating-point tensor",
        ),
    ]


@pytest.mark.parametrize(("call", "error", "message"), _module_cases() + _functional_cases())
def test_bad_input(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------------------------------
# findings of the adversarial review (issue 11, section 4)
# ------------------------------------------------------------------------------------------


def test_uint8_and_bool_targets_are_refused_not_read_as_masks() -> None:
    """uint8 targets used to index as a mask: with B == C the margin landed on the diagonal."""
    for dtype in (torch.uint8, torch.bool):
        with pytest.raises(TypeError, match="target must hold integer class indices"):
            M.additive_angular_margin_loss(torch.zeros(4, 4), torch.ones(4, dtype=dtype))


@pytest.mark.parametrize("name", ["LSoftmaxLoss", "ASoftmaxLoss", "AMSoftmaxLoss", "ArcFaceLoss"])
def test_int32_targets_equal_int64(name: str) -> None:
    x, y = _data(5)
    torch.manual_seed(0)
    head = getattr(M, name)(D, C, dtype=F64)
    head.eval()  # the lambda schedule does not move between the two calls
    torch.testing.assert_close(head(x, y.int()), head(x, y), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["AMSoftmaxLoss", "ArcFaceLoss"])
def test_float16_zero_feature_row_is_finite(name: str) -> None:
    """F.normalize's eps (1e-12) is 0 in float16: a zero row used to give NaN."""
    torch.manual_seed(0)
    head = getattr(M, name)(D, C, dtype=torch.float16)
    x = torch.randn(3, D, dtype=torch.float16)
    x[1] = 0
    x.requires_grad_(True)
    loss = head(x, torch.tensor([0, 1, 2]))
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_non_integer_margin_has_the_limit_derivative_at_cos_one() -> None:
    """d psi_m / d cos at cos = 1 is m^2 (cos(m arccos c) ~ 1 - m^2 (1 - c)), not 0."""
    for m in (1.5, 2.5, 3.7):
        c = torch.tensor([1.0], dtype=F64, requires_grad=True)
        value = M.multiplicative_angular_margin(c, m)
        (slope,) = torch.autograd.grad(value.sum(), c)
        assert value.item() == 1.0
        assert slope.item() == pytest.approx(m * m, rel=1e-12)
        # and it is the limit of the slope just inside
        near = torch.tensor([1 - 1e-9], dtype=F64, requires_grad=True)
        (inside,) = torch.autograd.grad(M.multiplicative_angular_margin(near, m).sum(), near)
        assert inside.item() == pytest.approx(m * m, rel=1e-6)


@pytest.mark.parametrize("name", ["LSoftmaxLoss", "ASoftmaxLoss"])
def test_scheduled_heads_make_no_host_sync_and_compile(name: str) -> None:
    """With the default lambda schedule (read from a buffer, advanced in place by step())."""
    import companion
    from tests.host_syncs import count_host_syncs

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    eager = getattr(M, name)(D, C)
    torch.manual_seed(0)
    compiled_head = getattr(M, name)(D, C)
    compiled = torch.compile(compiled_head, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(5, D), torch.randint(C, (5,))
    with companion.value_checks(False):
        head = getattr(M, name)(D, C)
        with count_host_syncs() as syncs:
            head(x, y).backward()
            head.step()
        assert syncs() == 0
        for _ in range(3):
            torch.testing.assert_close(compiled(x, y), eager(x, y), rtol=1e-4, atol=1e-5)
            eager.step()
            compiled_head.step()
    assert int(eager.iteration) == int(compiled_head.iteration) == 3
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # step() recompiles nothing


# ------------------------------------------------------------------------------------------
# issue 17: the schedule under checkpointing, and the AMP pattern
# ------------------------------------------------------------------------------------------

SCHEDULED = ["LSoftmaxLoss", "ASoftmaxLoss"]
HEAD_CLASSES = ["LSoftmaxLoss", "ASoftmaxLoss", "AMSoftmaxLoss", "ArcFaceLoss"]


def _training_step(
    head: torch.nn.Module, body: torch.nn.Module, x: Tensor, y: Tensor, mode: str
) -> tuple[Tensor, list[Tensor]]:
    """One training step (forward, backward, ``head.step()``): the loss and every gradient."""
    from torch.utils.checkpoint import checkpoint

    for p in (*body.parameters(), *head.parameters()):
        p.grad = None

    def run(inputs: Tensor) -> Tensor:
        out: Tensor = head(body(inputs), y)
        return out

    if mode == "plain":
        loss = run(x)
    else:
        loss = checkpoint(run, x, use_reentrant=mode == "reentrant")
    loss.backward()
    head.step()
    grads = [p.grad.clone() for p in (*body.parameters(), *head.parameters())]
    return loss.detach(), grads


@pytest.mark.parametrize("mode", ["non-reentrant", "reentrant"])
@pytest.mark.parametrize("name", SCHEDULED)
def test_checkpointed_head_advances_once_per_step_with_the_plain_gradient(
    name: str, mode: str
) -> None:
    """torch.utils.checkpoint runs the forward twice: the schedule must not see it."""
    x, y = _data(21)
    x.requires_grad_(True)  # the reentrant variant needs an input that requires grad
    torch.manual_seed(0)
    body = torch.nn.Linear(D, D, dtype=F64)
    fast = M.LambdaSchedule(base=10.0, gamma=1.0, power=1.0, lambda_min=0.0)  # moves each step
    torch.manual_seed(1)
    plain = getattr(M, name)(D, C, schedule=fast, dtype=F64)
    torch.manual_seed(1)
    checkpointed = getattr(M, name)(D, C, schedule=fast, dtype=F64)
    for step in range(3):
        want, grads_want = _training_step(plain, body, x, y, "plain")
        got, grads_got = _training_step(checkpointed, body, x, y, mode)
        assert int(plain.iteration) == int(checkpointed.iteration) == step + 1
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        for g, w in zip(grads_got, grads_want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULED)
def test_schedule_advances_by_step_not_by_forward_pass(name: str) -> None:
    """Gradient accumulation: micro-batches of one step share lambda; step() moves it once."""
    x, y = _data(22)
    head = getattr(M, name)(D, C, schedule=M.SPHEREFACE_SCHEDULE, dtype=F64)
    first = head(x[:6], y[:6])
    second = head(x[6:], y[6:])
    (first + second).backward()
    assert int(head.iteration) == 0 and head.lambda_ == M.SPHEREFACE_SCHEDULE(0)
    lam = torch.tensor(head.lambda_, dtype=F64)
    want = getattr(M, name)(D, C, schedule=None, dtype=F64)
    want.load_state_dict(head.state_dict())
    logits, norm = want._logits_and_norm(x[:6], y[:6])
    functional = M.large_margin_softmax_loss if name == "LSoftmaxLoss" else None
    if functional is not None:
        torch.testing.assert_close(first, functional(logits, y[:6], norm, 4, lam))
    head.step()
    assert int(head.iteration) == 1 and head.lambda_ == M.SPHEREFACE_SCHEDULE(1)
    head.step()
    assert int(head.iteration) == 2


@pytest.mark.parametrize("name", SCHEDULED)
def test_a_forgotten_step_is_reported_once(name: str) -> None:
    """Training forward passes without step() leave lambda at its start: a warning says so."""
    import warnings

    x, y = _data(23)
    head = getattr(M, name)(D, C, dtype=F64)
    with pytest.warns(UserWarning, match=r"call step\(\) once per training step"):
        for _ in range(M.STEP_REMINDER_AFTER):
            head(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2 * M.STEP_REMINDER_AFTER):
            head(x, y)  # once only
        stepped = getattr(M, name)(D, C, dtype=F64)
        for _ in range(2 * M.STEP_REMINDER_AFTER):
            stepped(x, y)
            stepped.step()
        for _ in range(2 * M.STEP_REMINDER_AFTER):
            getattr(M, name)(D, C, schedule=None, dtype=F64)(x, y)  # nothing to advance


@pytest.mark.parametrize("name", HEAD_CLASSES)
def test_float32_head_takes_features_from_an_autocast_backbone(name: str) -> None:
    """The AMP pattern: backbone under autocast (bfloat16 features), head weights float32."""
    torch.manual_seed(0)
    body = torch.nn.Linear(D, D)
    head = getattr(M, name)(D, C)
    x, y = torch.randn(B, D), torch.randint(C, (B,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = body(x)
        assert features.dtype == torch.bfloat16
        loss = head(features, y)
    assert loss.dtype == torch.float32
    g_features, g_weight = torch.autograd.grad(loss, (features, head.weight))
    assert g_features.dtype == torch.bfloat16 and g_weight.dtype == torch.float32
    # exactly the float32 computation on the upcast features, outside autocast
    up = features.detach().float().requires_grad_(True)
    want = head(up, y)
    w_features, w_weight = torch.autograd.grad(want, (up, head.weight))
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    torch.testing.assert_close(g_weight, w_weight, rtol=0, atol=0)
    torch.testing.assert_close(g_features, w_features.to(torch.bfloat16), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head.logits(features).dtype == torch.float32
        assert head.cosine(features).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", HEAD_CLASSES)
def test_float32_head_takes_half_features(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    head = getattr(M, name)(D, C)
    x, y = torch.randn(B, D).to(dtype).requires_grad_(True), torch.randint(C, (B,))
    loss = head(x, y)
    assert loss.dtype == torch.float32
    (g,) = torch.autograd.grad(loss, x)
    assert g.dtype == dtype
    up = x.detach().float().requires_grad_(True)
    want = head(up, y)
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    torch.testing.assert_close(g, torch.autograd.grad(want, up)[0].to(dtype), rtol=0, atol=0)


def test_head_never_casts_its_weight_down() -> None:
    head = M.ArcFaceLoss(D, C)
    y = torch.randint(C, (B,))
    with pytest.raises(TypeError, match=r"^features must have the same dtype as weight"):
        head(torch.randn(B, D, dtype=F64), y)
    with pytest.raises(ValueError, match=r"^features must be on the same device as weight"):
        head(torch.randn(B, D, device="meta"), y)
    half = M.ArcFaceLoss(D, C, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"^features must have the same dtype as weight"):
        half(torch.randn(B, D), y)
