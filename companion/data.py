"""Seeding and the data sets the chapters use.

Everything here is deterministic given a seed and needs no download: data is either generated
or loaded from the copies that ship inside scikit-learn (digits, iris, breast cancer).
Generators used by a single chapter live in that chapter's module; this file holds the shared
ones.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from companion._validate import check_finite, check_int, check_positive, check_tensor

__all__ = [
    "Split",
    "ink_width",
    "load_breast_cancer",
    "load_digits",
    "logistic_noise",
    "paired_views",
    "partially_tagged_clusters",
    "seed_everything",
    "split_train_test",
    "two_gaussians",
]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators, and return a fresh torch generator.

    Pass the returned generator to the functions that take ``generator=`` to keep a chapter's
    randomness independent of the order in which its cells run.

    Examples:
        >>> import torch
        >>> from companion.data import seed_everything
        >>> first = torch.rand(3, generator=seed_everything(0))
        >>> torch.equal(first, torch.rand(3, generator=seed_everything(0)))
        True
    """
    check_int(seed, "seed", minimum=0)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the legacy global state that libraries use)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def logistic_noise(n: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Draw ``n`` samples of the standard logistic distribution, in float64.

    Uses inversion: if :math:`u \sim U(0, 1)` then :math:`\log u - \log(1 - u)` is logistic,
    whose cumulative distribution function is the sigmoid.

    Shape:
        - output: ``(n,)``, float64.

    Examples:
        >>> import torch
        >>> from companion.data import logistic_noise
        >>> x = logistic_noise(100_000, generator=torch.Generator().manual_seed(0))
        >>> x.shape, x.dtype
        (torch.Size([100000]), torch.float64)
        >>> round(float((x < 1.0).double().mean()), 2)  # the CDF at 1: sigmoid(1) = 0.73
        0.73
    """
    check_int(n, "n", minimum=1)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    u = u.clamp(torch.finfo(torch.float64).tiny, 1 - torch.finfo(torch.float64).eps)
    return torch.log(u) - torch.log1p(-u)


def two_gaussians(
    n_per_class: int,
    distance: float = 2.0,
    std: float = 1.0,
    dim: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Two isotropic Gaussian classes whose means lie ``distance`` apart along the first axis.

    Returns:
        ``(x, y)``: ``x`` of shape ``(2 * n_per_class, dim)`` in float64 and ``y`` of shape
        ``(2 * n_per_class,)`` holding 0 or 1 (float64, ready for binary losses), shuffled.

    Shape:
        - output: ``x`` ``(2 * n_per_class, dim)`` and ``y`` ``(2 * n_per_class,)``.

    Examples:
        >>> import torch
        >>> from companion.data import two_gaussians
        >>> x, y = two_gaussians(50, distance=4.0, generator=torch.Generator().manual_seed(0))
        >>> x.shape, y.shape, int(y.sum())
        (torch.Size([100, 2]), torch.Size([100]), 50)
        >>> bool(x[y == 0, 0].mean() < -1), bool(x[y == 1, 0].mean() > 1)  # means at -2 and 2
        (True, True)
    """
    check_int(n_per_class, "n_per_class", minimum=1)
    check_int(dim, "dim", minimum=1)
    check_positive(std, "std")
    check_positive(distance, "distance", allow_zero=True)
    mean = torch.zeros(dim, dtype=torch.float64)
    mean[0] = distance / 2
    x0 = torch.randn(n_per_class, dim, generator=generator, dtype=torch.float64) * std - mean
    x1 = torch.randn(n_per_class, dim, generator=generator, dtype=torch.float64) * std + mean
    x = torch.cat([x0, x1])
    y = torch.cat([torch.zeros(n_per_class), torch.ones(n_per_class)]).to(torch.float64)
    order = torch.randperm(2 * n_per_class, generator=generator)
    return x[order], y[order]


@dataclass(frozen=True)
class Split:
    """A train/test split of features and targets, as tensors.

    Examples:
        >>> import torch
        >>> from companion.data import Split
        >>> split = Split(torch.zeros(3, 2), torch.zeros(3), torch.ones(1, 2), torch.ones(1))
        >>> split.x_train.shape, split.y_test
        (torch.Size([3, 2]), tensor([1.]))
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def split_train_test(
    x: Tensor, y: Tensor, test_fraction: float = 0.25, *, seed: int = 0, standardize: bool = True
) -> Split:
    """Shuffle and split ``(x, y)``; optionally standardise ``x`` with the training statistics.

    Standardisation uses the mean and standard deviation of the training part only (features
    with zero spread are left unscaled), so nothing leaks from the test part.

    Shape:
        - x: ``(N, *)``; y: ``(N,)``.
        - output: ``x_test`` and ``y_test`` hold ``round(N * test_fraction)`` rows (at least
          one), ``x_train`` and ``y_train`` the others.

    Examples:
        >>> import torch
        >>> from companion.data import split_train_test
        >>> x, y = torch.arange(16.0).reshape(8, 2), torch.arange(8)  # row i is [2i, 2i + 1]
        >>> split = split_train_test(x, y, test_fraction=0.25, standardize=False)
        >>> split.x_train.shape, split.x_test.shape
        (torch.Size([6, 2]), torch.Size([2, 2]))
        >>> torch.equal(split.x_test[:, 0], 2.0 * split.y_test)  # rows keep their targets
        True
        >>> torch.allclose(split_train_test(x, y).x_train.std(0), torch.ones(2))  # standardised
        True
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = x.shape[0]
    n_test = max(1, round(n * test_fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    x_train, x_test = x[train], x[test]
    if standardize:
        mean = x_train.mean(0)
        std = x_train.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Split(x_train, y[train], x_test, y[test])


def load_digits(test_fraction: float = 0.25, *, seed: int = 0, standardize: bool = True) -> Split:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) as a float32/long split.

    Pixels are scaled from 0..16 to 0..1 before optional standardisation.

    Examples:
        >>> from companion.data import load_digits
        >>> split = load_digits(test_fraction=0.25, seed=0)
        >>> split.x_train.shape, split.x_test.shape, split.y_train.dtype
        (torch.Size([1348, 64]), torch.Size([449, 64]), torch.int64)
        >>> split.y_train.unique().tolist()
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return split_train_test(x, y, test_fraction, seed=seed, standardize=standardize)


def load_breast_cancer(
    test_fraction: float = 0.25, *, seed: int = 0, standardize: bool = True
) -> Split:
    """scikit-learn's bundled breast-cancer data (569 samples, 30 features) as a float64 split.

    Targets are float64 zeros and ones (1 = benign, as scikit-learn encodes it).

    Examples:
        >>> from companion.data import load_breast_cancer
        >>> split = load_breast_cancer(test_fraction=0.25, seed=0)
        >>> split.x_train.shape, split.x_test.shape
        (torch.Size([427, 30]), torch.Size([142, 30]))
        >>> split.y_train.dtype, split.y_train.unique().tolist()
        (torch.float64, [0.0, 1.0])
    """
    from sklearn.datasets import load_breast_cancer as _load

    data = _load()
    x = torch.tensor(data.data, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.float64)
    return split_train_test(x, y, test_fraction, seed=seed, standardize=standardize)


def ink_width(images: Tensor, side: int = 8) -> Tensor:
    r"""The horizontal spread of the ink in square grey-scale images, in pixels.

    With intensities :math:`I_{rc} \ge 0` and column index :math:`c`, the width is the
    ink-weighted standard deviation of the column,
    :math:`\sqrt{\sum_{rc} I_{rc} (c - \bar c)^2 / \sum_{rc} I_{rc}}` with
    :math:`\bar c = \sum_{rc} I_{rc}\, c / \sum_{rc} I_{rc}`. A single vertical stroke has width
    0; a narrow "1" has a small width and a round "0" a large one. It is a nonlinear function
    of the pixels (a ratio), so a linear model cannot fit it exactly.

    Args:
        images: shape ``(N, side * side)`` (flattened rows) or ``(N, side, side)``, with
            non-negative intensities and some ink in every image.
        side: the image's side length in pixels.

    Shape:
        - images: ``(N, side * side)`` or ``(N, side, side)``.
        - output: ``(N,)``.

    Examples:
        >>> import torch
        >>> from companion.data import ink_width
        >>> images = torch.zeros(2, 8, 8)
        >>> images[0, :, 3] = 1.0  # one vertical stroke
        >>> images[1, :, [0, 7]] = 1.0  # two strokes, 7 pixels apart
        >>> ink_width(images)
        tensor([0.0000, 3.5000])
    """
    check_int(side, "side", minimum=1)
    x = check_tensor(images, "images", ndim=(2, 3))
    if x.dim() == 2:
        if x.shape[1] != side * side:
            raise ValueError(
                f"images must have shape (N, {side * side}) or (N, {side}, {side}), "
                f"got {tuple(x.shape)}"
            )
        x = x.reshape(-1, side, side)
    elif tuple(x.shape[1:]) != (side, side):
        raise ValueError(
            f"images must have shape (N, {side * side}) or (N, {side}, {side}), "
            f"got {tuple(x.shape)}"
        )
    check_finite(x, "images")
    if bool((x < 0).any()):
        raise ValueError("images must hold non-negative intensities, got a negative entry")
    mass = x.sum(dim=(1, 2))
    if bool((mass <= 0).any()):
        raise ValueError("images must each contain some ink, got an all-zero image")
    column = torch.arange(side, dtype=x.dtype, device=x.device)
    mean = (x * column).sum(dim=(1, 2)) / mass
    spread = (x * (column - mean[:, None, None]).square()).sum(dim=(1, 2)) / mass
    return spread.clamp_min(0).sqrt()


def partially_tagged_clusters(
    n_per_cluster: int,
    distance: float = 4.0,
    std: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Three 2-D Gaussian clusters on a line; the middle one is tagged half 0, half 1.

    Cluster 0 is centred at ``(-distance, 0)`` and tagged 0, cluster 1 at ``(distance, 0)`` and
    tagged 1, and the *common* cluster 2 at the origin belongs to both classes, but each of its
    samples carries only one tag, 0 or 1 with probability 1/2: partially tagged data.

    Returns:
        ``(x, tag, cluster)``: ``x`` of shape ``(3 n, 2)`` in float32, the observed tags (long,
        0 or 1) and the true cluster of each sample (long, 0, 1 or 2), in cluster order.

    Examples:
        >>> import torch
        >>> from companion.data import partially_tagged_clusters
        >>> g = torch.Generator().manual_seed(0)
        >>> x, tag, cluster = partially_tagged_clusters(4, generator=g)
        >>> x.shape, cluster.tolist()
        (torch.Size([12, 2]), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    """
    check_int(n_per_cluster, "n_per_cluster", minimum=1)
    check_positive(distance, "distance")
    check_positive(std, "std")
    centres = torch.tensor([[-distance, 0.0], [distance, 0.0], [0.0, 0.0]])
    cluster = torch.arange(3).repeat_interleave(n_per_cluster)
    x = centres[cluster] + std * torch.randn(3 * n_per_cluster, 2, generator=generator)
    coin = (torch.rand(3 * n_per_cluster, generator=generator) < 0.5).long()
    tag = torch.where(cluster == 2, coin, cluster)
    return x, tag, cluster


def paired_views(
    n: int,
    *,
    latent_dim: int = 8,
    dims: tuple[int, int] = (32, 24),
    noise: float = 0.5,
    n_latents: int | None = None,
    mixing_seed: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Two "modalities" observed from a shared latent, for contrastive experiments.

    Each pair shares a latent :math:`z \sim \mathcal N(0, I)`; the first view is
    :math:`\tanh(z A) + \sigma\varepsilon_1`, the second :math:`z B + \sigma\varepsilon_2`
    with fixed random maps ``A``, ``B`` (drawn from ``mixing_seed``, so that every call
    produces the same two modalities) and independent noise. A good pair of encoders maps
    both views of a pair close together and the other pairs away.

    Args:
        n: number of pairs.
        latent_dim: dimension of the shared latent.
        dims: dimensions of the two views.
        noise: standard deviation :math:`\sigma \ge 0` of the view noise.
        n_latents: if given, only this many distinct latents are drawn and the ``n`` pairs
            pick among them at random: pairs with the same latent are near-duplicates.
        mixing_seed: seed of the two fixed maps.
        generator: draws the latents and the noise.

    Returns:
        ``(view_a, view_b, group)``: float32 tensors and ``group``, the index of each pair's
        latent.

    Shape:
        - view_a: ``(n, dims[0])``; view_b: ``(n, dims[1])``; group: ``(n,)``, int64.

    Examples:
        >>> import torch
        >>> from companion.data import paired_views
        >>> a, b, group = paired_views(5, generator=torch.Generator().manual_seed(0))
        >>> a.shape, b.shape, group.tolist()
        (torch.Size([5, 32]), torch.Size([5, 24]), [0, 1, 2, 3, 4])
    """
    check_int(n, "n", minimum=1)
    check_int(latent_dim, "latent_dim", minimum=1)
    check_int(dims[0], "dims[0]", minimum=1)
    check_int(dims[1], "dims[1]", minimum=1)
    check_positive(noise, "noise", allow_zero=True)
    mixing = torch.Generator().manual_seed(mixing_seed)
    map_a = torch.randn(latent_dim, dims[0], generator=mixing) / math.sqrt(latent_dim)
    map_b = torch.randn(latent_dim, dims[1], generator=mixing) / math.sqrt(latent_dim)
    if n_latents is None:
        latents = torch.randn(n, latent_dim, generator=generator)
        group = torch.arange(n)
    else:
        check_int(n_latents, "n_latents", minimum=1)
        distinct = torch.randn(n_latents, latent_dim, generator=generator)
        group = torch.randint(n_latents, (n,), generator=generator)
        latents = distinct[group]
    view_a = torch.tanh(latents @ map_a) + noise * torch.randn(n, dims[0], generator=generator)
    view_b = latents @ map_b + noise * torch.randn(n, dims[1], generator=generator)
    return view_a, view_b, group
