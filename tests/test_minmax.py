"""companion.minmax: distances, the closed-form separation, the loss against a naive formula,
gradients, extremes, convergence to the regular simplex, the sampler, the classifier, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from companion import minmax as MM
from companion.data import partially_tagged_clusters
from companion.minmax import (
    DISTANCES,
    LabelEmbeddingClassifier,
    class_separation,
    min_max_loss,
    pairwise_distance,
    sample_other_classes,
)
from tests.conftest import LOW_PRECISION, REDUCTIONS, assert_finite

F64 = torch.float64


def _reference_distance(u: Tensor, v: Tensor, distance: str) -> Tensor:
    """Each distance written with torch's own functions."""
    if distance == "cosine":
        return 1 - F.cosine_similarity(u, v, dim=-1, eps=1e-12)
    if distance == "l2":
        return torch.linalg.vector_norm(u - v, dim=-1) ** 2
    log_p, log_q = F.log_softmax(u, dim=-1), F.log_softmax(v, dim=-1)
    kl_pq = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)  # KL(p || q)
    kl_qp = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    return 0.5 * (kl_pq + kl_qp)


def _naive_loss(
    features: Tensor,
    embeddings: Tensor,
    target: Tensor,
    distance: str,
    negatives: Tensor | None,
    weight: float,
    radius: float,
    temperature: float | None,
) -> Tensor:
    """The Min-Max loss with explicit loops over samples and pairs."""
    c = [radius * e / e.norm() for e in embeddings]

    def soft_min(values: list[Tensor]) -> Tensor:
        d = torch.stack(values)
        if temperature is None:
            return d.mean()
        return -temperature * torch.log(torch.exp(-d / temperature).mean())

    all_pairs = [
        _reference_distance(c[a], c[b], distance)
        for a, b in itertools.combinations(range(len(c)), 2)
    ]
    losses = []
    for i in range(len(features)):
        pull = _reference_distance(features[i], c[int(target[i])], distance)
        if negatives is None:
            push = soft_min(all_pairs)
        else:
            row = negatives[i].reshape(-1)
            push = soft_min(
                [_reference_distance(c[int(target[i])], c[int(n)], distance) for n in row]
            )
        losses.append(pull - weight * push)
    return torch.stack(losses)


@pytest.mark.parametrize("distance", DISTANCES)
@given(n=st.integers(1, 6), d=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_pairwise_distance_matches_torch(distance: str, n: int, d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=F64) * 3
    v = torch.randn(n, d, generator=g, dtype=F64) * 3
    torch.testing.assert_close(
        pairwise_distance(u, v, distance), _reference_distance(u, v, distance)
    )
    assert (pairwise_distance(u, v, distance) >= -1e-12).all()
    torch.testing.assert_close(pairwise_distance(u, u, distance), torch.zeros(n, dtype=F64))


@pytest.mark.parametrize("distance", DISTANCES)
@given(
    k=st.integers(2, 7),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    temperature=st.sampled_from([None, 0.05, 1.0]),
    radius=st.sampled_from([1.0, 2.5]),
)
def test_class_separation_equals_the_naive_pair_average(
    distance: str, k: int, d: int, seed: int, temperature: float | None, radius: float
) -> None:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(k, d, generator=g, dtype=F64)
    c = radius * emb / emb.norm(dim=1, keepdim=True)
    pairs = torch.stack(
        [_reference_distance(c[a], c[b], distance) for a, b in itertools.combinations(range(k), 2)]
    )
    if temperature is None:
        want = pairs.mean()
    else:
        want = -temperature * (torch.logsumexp(-pairs / temperature, 0) - math.log(len(pairs)))
    got = class_separation(emb, distance, radius=radius, temperature=temperature)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_soft_minimum_interpolates_between_minimum_and_mean() -> None:
    emb = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    c = emb / emb.norm(dim=1, keepdim=True)
    pairs = 1 - (c @ c.T)[torch.triu_indices(5, 5, 1).unbind()]
    cold = class_separation(emb, temperature=1e-4)
    hot = class_separation(emb, temperature=1e4)
    assert abs(cold - pairs.min()) < 1e-3
    assert abs(hot - pairs.mean()) < 1e-4
    assert pairs.min() <= cold <= class_separation(emb, temperature=0.3) <= hot


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("negative_shape", ["all", "vector", "matrix"])
@pytest.mark.parametrize("temperature", [None, 0.2])
def test_loss_equals_the_naive_formula(
    distance: str, negative_shape: str, temperature: float | None
) -> None:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(6, 3, generator=g, dtype=F64) * 2
    emb = torch.randn(4, 3, generator=g, dtype=F64)
    target = torch.tensor([0, 1, 2, 3, 1, 0])
    negatives = None
    if negative_shape == "vector":
        negatives = sample_other_classes(target, 4, generator=g)[:, 0]
    elif negative_shape == "matrix":
        negatives = sample_other_classes(target, 4, 3, generator=g)
    kwargs = {"separation_weight": 0.7, "radius": 1.5, "temperature": temperature}
    want = _naive_loss(features, emb, target, distance, negatives, 0.7, 1.5, temperature)
    for reduction in REDUCTIONS:
        got = min_max_loss(features, emb, target, distance, negatives, reduction, **kwargs)
        reduced = {"none": want, "mean": want.mean(), "sum": want.sum()}[reduction]
        torch.testing.assert_close(got, reduced, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("distance", DISTANCES)
def test_finite_at_extremes(dtype: torch.dtype, distance: str) -> None:
    # features of norm 1e4, a zero feature, features exactly on and opposite to their class
    # (cos = +1 and -1), and antipodal class embeddings
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=dtype, requires_grad=True)
    features = torch.tensor(
        [[1e4, 0.0], [-1e4, 1e4], [0.0, 0.0], [1.0, 0.0], [-3.0, 0.0]],
        dtype=dtype,
        requires_grad=True,
    )
    target = torch.tensor([0, 2, 1, 0, 0])
    for negatives in (None, torch.tensor([1, 0, 0, 1, 2])):
        for temperature in (None, 0.1):
            loss = min_max_loss(features, emb, target, distance, negatives, temperature=temperature)
            grads = torch.autograd.grad(loss, (features, emb))
            assert loss.dtype == dtype
            assert_finite(loss, *grads)


@pytest.mark.parametrize("distance", DISTANCES)
def test_norm_constraint_by_construction(distance: str) -> None:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(8, 4, generator=g, dtype=F64)
    emb = torch.randn(5, 4, generator=g, dtype=F64)
    target = torch.randint(0, 5, (8,), generator=g)
    scales = torch.tensor([0.01, 1.0, 300.0], dtype=F64)[:, None]
    # rescaling a raw embedding changes nothing: only directions enter the loss
    losses = [min_max_loss(features, emb * s, target, distance) for s in scales]
    for other in losses[1:]:
        torch.testing.assert_close(other, losses[0])


def test_loss_is_bounded_below() -> None:
    # the pull is >= 0 and, on the sphere of radius r, the push is at most 2 (cosine) or 4 r^2 (l2)
    g = torch.Generator().manual_seed(4)
    for _ in range(20):
        features = torch.randn(5, 3, generator=g, dtype=F64) * 10
        emb = torch.randn(4, 3, generator=g, dtype=F64) * 10
        target = torch.randint(0, 4, (5,), generator=g)
        assert min_max_loss(features, emb, target, "cosine", reduction="none").min() >= -2
        l2 = min_max_loss(features, emb, target, "l2", reduction="none", radius=2.0)
        assert l2.min() >= -16


def _angles_degrees(c: Tensor) -> Tensor:
    u = c / c.norm(dim=1, keepdim=True)
    k = len(c)
    cos = (u @ u.T)[torch.triu_indices(k, k, 1).unbind()]
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))  # reporting only: no gradient through acos


def _train_separation(
    weight: Tensor, steps: int, lr: float = 1.0, temperature: float | None = None
) -> None:
    opt = torch.optim.SGD([weight], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (-class_separation(weight, temperature=temperature)).backward()
        opt.step()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_classes_in_the_plane_converge_to_120_degrees(seed: int) -> None:
    torch.manual_seed(seed)
    model = LabelEmbeddingClassifier(2, num_classes=3, embedding_dim=2, radius=2.0)
    _train_separation(model.weight, steps=200)
    angles = _angles_degrees(model.class_embeddings.detach())
    assert (angles - 120).abs().max() < 2, angles
    # the norm constraint holds after training
    torch.testing.assert_close(
        model.class_embeddings.detach().norm(dim=1), torch.full((3,), 2.0), rtol=1e-6, atol=0
    )


def test_soft_minimum_reaches_the_regular_simplex_where_the_mean_need_not() -> None:
    # four classes in 3-D: the regular tetrahedron has every cosine equal to -1/3
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    _train_separation(weight, steps=400, temperature=0.1)
    cos_tetrahedron = math.degrees(math.acos(-1 / 3))
    assert (_angles_degrees(weight.detach()) - cos_tetrahedron).abs().max() < 1
    # the plain mean only asks the unit embeddings to sum to zero: two antipodal pairs at any
    # angle are just as good, so two classes can end up much closer than the simplex
    u = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0.9, 0.1, 0], [-0.9, -0.1, 0]], dtype=F64)
    pinned = class_separation(u)
    torch.testing.assert_close(pinned, torch.tensor(1 + 1 / 3, dtype=F64))
    assert _angles_degrees(u).min() < 10


@given(
    n=st.integers(1, 40),
    k=st.integers(2, 6),
    m=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_sampler_never_returns_the_target(n: int, k: int, m: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n,), generator=g)
    negatives = sample_other_classes(target, k, m, generator=g)
    assert negatives.shape == (n, m) and negatives.dtype == torch.long
    assert (negatives != target[:, None]).all()
    assert ((negatives >= 0) & (negatives < k)).all()


def test_sampler_is_uniform_over_the_other_classes() -> None:
    g = torch.Generator().manual_seed(5)
    target = torch.full((30_000,), 2)
    counts = torch.bincount(sample_other_classes(target, 5, generator=g)[:, 0], minlength=5)
    assert counts[2] == 0
    freq = counts[[0, 1, 3, 4]].double() / len(target)
    assert (freq - 0.25).abs().max() < 0.01  # about 4 standard deviations
    again = sample_other_classes(target, 5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(
        sample_other_classes(target, 5, generator=torch.Generator().manual_seed(5)), again
    )


def test_classifier_scores_labels_and_loss() -> None:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
    model = LabelEmbeddingClassifier(3, 5, 4, encoder=encoder, scale=7.0)
    x = torch.randn(10, 3)
    target = torch.randint(0, 5, (10,))
    scores = model.scores(x)
    assert scores.shape == (10, 5) and ((scores > 0) & (scores < 1)).all()
    cos = F.cosine_similarity(model(x)[:, None, :], model.weight[None, :, :], dim=-1)
    torch.testing.assert_close(scores, torch.sigmoid(7.0 * cos))
    # at the threshold 1/2 the labels are cos > 0, whatever the scale
    assert torch.equal(model.predict_labels(x), cos > 0)
    torch.testing.assert_close(model.loss(x, target), min_max_loss(model(x), model.weight, target))
    negatives = sample_other_classes(target, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        model.loss(x, target, negatives, reduction="sum"),
        min_max_loss(model(x), model.weight, target, negatives=negatives, reduction="sum"),
    )


def test_partially_tagged_clusters() -> None:
    x, tag, cluster = partially_tagged_clusters(500, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1500, 2) and x.dtype == torch.float32
    assert torch.equal(tag[cluster < 2], cluster[cluster < 2])  # pure clusters: tag = cluster
    common = tag[cluster == 2].double()
    assert set(common.tolist()) == {0.0, 1.0} and abs(common.mean() - 0.5) < 0.07
    means = torch.stack([x[cluster == k].mean(dim=0) for k in range(3)])
    torch.testing.assert_close(means, torch.tensor([[-4.0, 0], [4.0, 0], [0, 0]]), atol=0.2, rtol=0)
    with pytest.raises(ValueError, match=r"n_per_cluster must be at least 1"):
        partially_tagged_clusters(0)


BAD_LOSS_INPUT = [
    ({"features": torch.zeros(3)}, ValueError, r"features must have 2 dimension\(s\), got 1"),
    ({"features": torch.zeros(0, 2)}, ValueError, r"features must not be empty"),
    ({"weight": torch.ones(1, 2)}, ValueError, r"^weight must hold at least 2"),
    ({"weight": torch.ones(3, 5)}, ValueError, r"^weight must have the same embedding size as"),
    ({"weight": torch.ones(3, 2, dtype=F64)}, TypeError, r"^weight must have"),
    ({"target": torch.tensor([0.0, 1.0, 1.0])}, TypeError, r"target must hold integer class"),
    (
        {"target": torch.tensor([0, 3, 1])},
        ValueError,
        r"target must hold class indices in \[0, 2\]",
    ),
    ({"target": torch.tensor([0, -1, 1])}, ValueError, r"target must hold class indices .*got -1"),
    ({"target": torch.tensor([0, 1])}, ValueError, r"features and target must have the same batch"),
    ({"negatives": torch.tensor([1, 2, 0])}, ValueError, r"negatives must differ from target"),
    ({"negatives": torch.tensor([1, 2])}, ValueError, r"target and negatives must have the same"),
    ({"negatives": torch.tensor([1.0, 2.0, 0.0])}, TypeError, r"negatives must hold integer"),
    ({"negatives": torch.ones(3, 1, 1).long()}, ValueError, r"negatives must have shape \(N,\)"),
    ({"negatives": torch.tensor([1, 5, 0])}, ValueError, r"negatives must hold class indices"),
    ({"distance": "euclid"}, ValueError, r"distance must be one of .*got 'euclid'"),
    ({"reduction": "avg"}, ValueError, r"reduction must be one of"),
    ({"radius": 0.0}, ValueError, r"radius must be a finite positive number"),
    ({"temperature": -1.0}, ValueError, r"temperature must be a finite positive number"),
    ({"separation_weight": -0.5}, ValueError, r"separation_weight must be a finite non-negative"),
    ({"features": torch.tensor([[0.0, float("nan")]] * 3)}, ValueError, r"features contains NaN"),
]


@pytest.mark.parametrize(("override", "error", "message"), BAD_LOSS_INPUT)
def test_loss_bad_input(override: dict[str, object], error: type[Exception], message: str) -> None:
    args: dict[str, object] = {
        "features": torch.randn(3, 2),
        "weight": torch.randn(3, 2),
        "target": torch.tensor([0, 2, 1]),
    }
    args.update(override)
    with pytest.raises(error, match=message):
        min_max_loss(**args)  # type: ignore[arg-type]


def test_sampler_and_classifier_bad_input() -> None:
    with pytest.raises(ValueError, match=r"num_classes must be at least 2, got 1"):
        sample_other_classes(torch.tensor([0]), 1)
    with pytest.raises(ValueError, match=r"num_negatives must be at least 1, got 0"):
        sample_other_classes(torch.tensor([0]), 3, 0)
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 2\]"):
        sample_other_classes(torch.tensor([3]), 3)
    with pytest.raises(ValueError, match=r"target must have shape \(N,\)"):
        sample_other_classes(torch.tensor([[0]]), 3)
    with pytest.raises(ValueError, match=r"num_classes must be at least 2, got 1"):
        LabelEmbeddingClassifier(2, 1, 2)
    with pytest.raises(ValueError, match=r"distance must be one of"):
        LabelEmbeddingClassifier(2, 3, 2, distance="dot")
    model = LabelEmbeddingClassifier(2, 3, 2)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 1.5"):
        model.predict_labels(torch.zeros(1, 2), threshold=1.5)
    with pytest.raises(ValueError, match=r"^input must have 2 dimension\(s\), got 1"):
        model.scores(torch.zeros(2))


def test_label_embedding_classifier_takes_device_and_dtype() -> None:
    """Finding 10: it had no device/dtype arguments and failed on float64 input."""
    torch.manual_seed(0)
    model = MM.LabelEmbeddingClassifier(4, 3, 2, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    loss = model.loss(x, torch.tensor([0, 1, 2, 0, 1]))
    assert loss.dtype == torch.float64 and model.scores(x).dtype == torch.float64


def test_float16_zero_feature_row_is_finite() -> None:
    """Finding 5: normalising a zero row in float16 used to give NaN."""
    f = torch.randn(3, 4, dtype=torch.float16)
    f[0] = 0
    f.requires_grad_(True)
    c = torch.randn(3, 4, dtype=torch.float16, requires_grad=True)
    loss = MM.min_max_loss(f, c, torch.tensor([0, 1, 2]))
    grads = torch.autograd.grad(loss, (f, c))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
