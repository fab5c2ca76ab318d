r"""The Min-Max loss: pull samples to a learned class embedding, push class embeddings apart.

Each class :math:`k` owns an embedding :math:`c_k \in \mathbb{R}^D`; an encoder maps a sample to a
feature vector :math:`f_i`. The loss of sample :math:`i` with class :math:`y_i` is

.. math::

    L_i = \underbrace{d(f_i, c_{y_i})}_{\text{pull}}
          - \lambda\, \underbrace{S_i}_{\text{push}},

where the push term :math:`S_i` is either the separation of *all* class pairs,
:math:`\operatorname{mean}_{a < b} d(c_a, c_b)` (the same for every sample), or, with sampled
negatives, :math:`\operatorname{mean}_m d(c_{y_i}, c_{n_{im}})` over the other classes
:math:`n_{im}` drawn for sample :math:`i`. With a ``temperature`` :math:`\tau`, the mean is
replaced by the soft minimum :math:`-\tau \log \operatorname{mean} e^{-D/\tau}`, which puts the
weight on the closest pairs.

**The norm constraint.** Without one, the push term is unbounded for the L2 and KL distances
(move the embeddings apart, or sharpen their distributions, forever). It is enforced here by
construction: the embeddings passed in are first rescaled to norm ``radius``,
:math:`\tilde c_k = r\,c_k / \lVert c_k\rVert`, and every distance uses :math:`\tilde c_k`. The
loss therefore depends only on the directions of the class embeddings, their norms can never
grow, and no projection step is needed in the optimiser. The cosine distance ignores the norm
anyway; for KL the radius acts as an inverse temperature of the class distributions.

**Distances** (``distance=``), for vectors :math:`u, v`:

* ``"cosine"``: :math:`1 - \cos(u, v)`, in :math:`[0, 2]`.
* ``"l2"``: the squared Euclidean distance :math:`\lVert u - v\rVert^2`.
* ``"kl"``: the symmetrised Kullback-Leibler divergence between the distributions
  :math:`p = \operatorname{softmax}(u)` and :math:`q = \operatorname{softmax}(v)`,
  :math:`\tfrac12[\mathrm{KL}(p\Vert q) + \mathrm{KL}(q\Vert p)]
  = \tfrac12 \sum_k (p_k - q_k)(\log p_k - \log q_k)`.

Torch ships no Min-Max loss; this is the production version. The all-pairs mean costs
:math:`O(KD)` (closed forms in the sums of the embeddings, never a :math:`K \times K` matrix);
the soft minimum needs the :math:`K \times K` matrix of pair distances.

The loss was proposed in a blog post by Pawan (2020), "Min-Max Loss, Revisiting Classification
Losses"; its relatives are the center loss (Wen et al., 2016) and proxy-based metric losses
(Movshovitz-Attias et al., 2017).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from companion._numerics import normalize
from companion._validate import (
    check_batch_size,
    check_choice,
    check_class_index,
    check_finite,
    check_int,
    check_positive,
    check_reduction,
    check_same_dtype_device,
    check_tensor,
    reduce_loss,
    value_checks_enabled,
)

__all__ = [
    "DISTANCES",
    "LabelEmbeddingClassifier",
    "class_separation",
    "min_max_loss",
    "pairwise_distance",
    "sample_other_classes",
]

#: The distances the loss understands.
DISTANCES: tuple[str, ...] = ("cosine", "l2", "kl")


def _check_distance(distance: object) -> str:
    return check_choice(distance, "distance", DISTANCES)


def _check_options(radius: float, temperature: float | None) -> None:
    check_positive(radius, "radius")
    if temperature is not None:
        check_positive(temperature, "temperature")


def _constrain(class_embeddings: Tensor, radius: float) -> Tensor:
    """Rescale every class embedding to norm ``radius`` (the norm constraint)."""
    return radius * normalize(class_embeddings, dim=-1)


def _distance(u: Tensor, v: Tensor, distance: str) -> Tensor:
    """Row-wise distance between broadcastable ``u`` and ``v`` (last dimension reduced)."""
    if distance == "cosine":
        un = normalize(u, dim=-1)
        vn = normalize(v, dim=-1)
        return 1 - (un * vn).sum(dim=-1)
    if distance == "l2":
        return ((u - v) ** 2).sum(dim=-1)
    log_p, log_q = torch.log_softmax(u, dim=-1), torch.log_softmax(v, dim=-1)
    return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)


def pairwise_distance(u: Tensor, v: Tensor, distance: str = "cosine") -> Tensor:
    r"""The distance between matching rows of ``u`` and ``v`` (shapes ``(..., D)``, broadcast).

    ``"cosine"`` is :math:`1 - \cos`, ``"l2"`` the squared Euclidean distance, ``"kl"`` the
    symmetrised KL divergence between the softmax distributions of the two vectors. No norm
    constraint is applied here. Returns a tensor of the broadcast shape without the last dimension.

    Shape:
        - u, v: ``(..., D)``, broadcastable; output: the broadcast shape without ``D``.

    Examples:
        >>> import torch
        >>> from companion.minmax import pairwise_distance
        >>> u, v = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> pairwise_distance(u, v, "cosine"), pairwise_distance(u, v, "l2")
        (tensor([1.]), tensor([5.]))
    """
    _check_distance(distance)
    check_tensor(u, "u")
    check_tensor(v, "v")
    check_same_dtype_device(u, "u", v, "v")
    return _distance(u, v, distance)


def _soft_minimum(d: Tensor, temperature: float | None, dim: int) -> Tensor:
    """Mean of ``d`` along ``dim`` (temperature None) or -t log mean exp(-d / t)."""
    if temperature is None:
        return d.mean(dim=dim)
    n = d.shape[dim]
    return -temperature * (torch.logsumexp(-d / temperature, dim=dim) - math.log(n))


def _all_pairs_mean(c: Tensor, distance: str) -> Tensor:
    """Mean distance over the K(K-1)/2 unordered pairs, in O(KD) from sums of the embeddings."""
    k = c.shape[0]
    pairs = k * (k - 1) / 2
    if distance == "cosine":
        # sum_{a<b} cos = (|sum_a u_a|^2 - K) / 2 for unit vectors u_a
        u = normalize(c, dim=-1)
        cos_sum = 0.5 * (u.sum(dim=0).pow(2).sum() - (u * u).sum())
        return 1 - cos_sum / pairs
    if distance == "l2":
        # sum_{a<b} |c_a - c_b|^2 = K sum_a |c_a|^2 - |sum_a c_a|^2
        return (k * c.pow(2).sum() - c.sum(dim=0).pow(2).sum()) / pairs
    # sum_{a<b} J(p_a, p_b) = K sum_a p_a.log p_a - (sum_a p_a).(sum_b log p_b), J = symmetrised KL
    log_p = torch.log_softmax(c, dim=-1)
    p = log_p.exp()
    return (k * (p * log_p).sum() - (p.sum(dim=0) * log_p.sum(dim=0)).sum()) / (2 * pairs)


def _pair_matrix(c: Tensor, distance: str) -> Tensor:
    """The K x K matrix of distances between class embeddings."""
    if distance == "cosine":
        u = normalize(c, dim=-1)
        return 1 - u @ u.T
    if distance == "l2":
        sq = c.pow(2).sum(dim=-1)
        return (sq[:, None] + sq[None, :] - 2 * c @ c.T).clamp(min=0)
    log_p = torch.log_softmax(c, dim=-1)
    p = log_p.exp()
    cross = p @ log_p.T  # (a, b) -> sum_k p_ak log p_bk
    self_term = cross.diagonal()
    return 0.5 * (self_term[:, None] + self_term[None, :] - cross - cross.T)


def _separation(c: Tensor, distance: str, temperature: float | None) -> Tensor:
    if temperature is None:
        return _all_pairs_mean(c, distance)
    k = c.shape[0]
    upper = torch.triu_indices(k, k, offset=1, device=c.device)
    return _soft_minimum(_pair_matrix(c, distance)[upper[0], upper[1]], temperature, dim=0)


def class_separation(
    class_embeddings: Tensor,
    distance: str = "cosine",
    *,
    radius: float = 1.0,
    temperature: float | None = None,
) -> Tensor:
    r"""How far apart the class embeddings are: the push term of the all-pairs Min-Max loss.

    The embeddings are first rescaled to norm ``radius``. Without ``temperature`` this is the
    mean distance over the :math:`K(K-1)/2` pairs, computed in :math:`O(KD)`; for the cosine
    distance it equals :math:`1 + 1/(K-1) - \lVert\sum_k \hat c_k\rVert^2 / (K(K-1))`, which is
    largest, :math:`1 + 1/(K-1)`, exactly when the unit embeddings sum to zero. With a
    ``temperature`` :math:`\tau` it is the soft minimum
    :math:`-\tau\log\operatorname{mean}_{a<b} e^{-d(c_a, c_b)/\tau}`, dominated by the closest
    pairs (it tends to the minimum pair distance as :math:`\tau \to 0`).

    Args:
        class_embeddings: floating tensor of shape ``(K, D)`` with :math:`K \ge 2`.
        distance: ``"cosine"``, ``"l2"`` or ``"kl"``.
        radius: the norm every embedding is rescaled to.
        temperature: ``None`` for the plain mean, or a positive soft-minimum temperature.

    Returns:
        A 0-d tensor.

    Examples:
        >>> import torch
        >>> from companion.minmax import class_separation
        >>> opposite = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])  # rescaled to norm 1 first
        >>> class_separation(opposite, "cosine"), class_separation(opposite, "l2")
        (tensor(2.), tensor(4.))
    """
    _check_distance(distance)
    _check_options(radius, temperature)
    _check_class_embeddings(class_embeddings, "class_embeddings")
    return _separation(_constrain(class_embeddings, radius), distance, temperature)


def _check_class_embeddings(embeddings: Tensor, name: str) -> None:
    check_tensor(embeddings, name, ndim=2)
    if embeddings.shape[0] < 2:
        raise ValueError(
            f"{name} must hold at least 2 classes (rows), got shape {tuple(embeddings.shape)}"
        )


def _check_negatives(negatives: object, target: Tensor, num_classes: int) -> Tensor:
    if not isinstance(negatives, Tensor):
        raise TypeError(
            f"negatives must be a torch.Tensor of class indices, got {type(negatives).__name__}"
        )
    if negatives.dim() not in (1, 2):
        raise ValueError(f"negatives must have shape (N,) or (N, M), got {tuple(negatives.shape)}")
    check_class_index(negatives, "negatives", num_classes)
    check_batch_size(target, "target", negatives, "negatives")
    negatives = negatives if negatives.dim() == 2 else negatives[:, None]
    if value_checks_enabled():
        clash = negatives == target[:, None]
        if bool(clash.any()):
            row = int(clash.any(dim=1).nonzero()[0])
            own = int(target[row])
            raise ValueError(
                "negatives must differ from target (a class cannot be its own negative), "
                f"got sample {row} of class {own} with {own} among its negatives"
            )
    return negatives.long()


def min_max_loss(
    features: Tensor,
    weight: Tensor,
    target: Tensor,
    distance: str = "cosine",
    negatives: Tensor | None = None,
    reduction: str = "mean",
    *,
    separation_weight: float = 1.0,
    radius: float = 1.0,
    temperature: float | None = None,
) -> Tensor:
    r"""The Min-Max loss :math:`L_i = d(f_i, \tilde c_{y_i}) - \lambda S_i` (see the module).

    Args:
        features: encoded samples :math:`f_i`, floating tensor of shape ``(N, D)``.
        weight: the class embeddings :math:`c_k`, one row per class, shape ``(K, D)``, same
            dtype and device as ``features``; they are rescaled to norm ``radius`` before use
            (the norm constraint).
        target: class indices of shape ``(N,)`` in ``[0, K)``.
        distance: ``"cosine"`` (:math:`1 - \cos`), ``"l2"`` (squared Euclidean) or ``"kl"``
            (symmetrised KL between softmax distributions).
        negatives: ``None`` to push all class pairs apart (the same push term :math:`S` for every
            sample), or integer class indices of shape ``(N,)`` or ``(N, M)``, other classes
            sampled for each sample (see :func:`sample_other_classes`); each must differ from the
            sample's target. Then :math:`S_i` averages :math:`d(\tilde c_{y_i}, \tilde c_n)` over
            sample :math:`i`'s negatives.
        reduction: ``"none"`` (shape ``(N,)``), ``"mean"`` or ``"sum"``.
        separation_weight: :math:`\lambda \ge 0`, the weight of the push term.
        radius: the norm of the constrained class embeddings.
        temperature: ``None`` averages the push distances; a positive :math:`\tau` takes their
            soft minimum instead, weighting the closest pairs most.

    Shape:
        - features: ``(N, D)``; weight: ``(K, D)``; target: ``(N,)`` int64 or int32;
          negatives: ``(N,)`` or ``(N, M)``.
        - output: scalar, or ``(N,)`` with ``reduction="none"``.

    Raises:
        TypeError, ValueError: on malformed input, with the argument's name.

    Examples:
        >>> import torch
        >>> from companion.minmax import min_max_loss
        >>> classes = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
        >>> on_their_class = torch.tensor([[2.0, 0.0], [-0.5, 0.0]])
        >>> min_max_loss(on_their_class, classes, torch.tensor([0, 1]))  # pull 0, push -2
        tensor(-2.)
    """
    check_reduction(reduction)
    _check_distance(distance)
    _check_options(radius, temperature)
    check_positive(separation_weight, "separation_weight", allow_zero=True)
    check_tensor(features, "features", ndim=2)
    check_finite(features, "features")
    _check_class_embeddings(weight, "weight")
    check_finite(weight, "weight")
    check_same_dtype_device(features, "features", weight, "weight")
    if features.shape[1] != weight.shape[1]:
        raise ValueError(
            "weight must have the same embedding size as features "
            f"({features.shape[1]}), got shape {tuple(weight.shape)}"
        )
    num_classes = weight.shape[0]
    if isinstance(target, Tensor) and target.dim() >= 1:
        check_batch_size(features, "features", target, "target")
    target = check_class_index(target, "target", num_classes, batch_shape=(features.shape[0],))

    c = _constrain(weight, radius)
    pull = _distance(features, c[target], distance)
    if negatives is None:
        push = _separation(c, distance, temperature).expand_as(pull)
    else:
        neg = _check_negatives(negatives, target, num_classes)
        push = _soft_minimum(_distance(c[target][:, None, :], c[neg], distance), temperature, 1)
    return reduce_loss(pull - separation_weight * push, reduction)


def sample_other_classes(
    target: Tensor,
    num_classes: int,
    num_negatives: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw, for every sample, ``num_negatives`` classes uniformly among those it is not in.

    Draws :math:`r` uniformly from ``0 .. K-2`` and returns ``r + (r >= target)``, which skips the
    target class without rejection. Draws are with replacement.

    Args:
        target: class indices of shape ``(N,)``.
        num_classes: K, at least 2.
        num_negatives: M, how many other classes per sample.
        generator: a torch generator for reproducible draws (on the target's device).

    Returns:
        A long tensor of shape ``(N, M)`` on the target's device.

    Examples:
        >>> import torch
        >>> from companion.minmax import sample_other_classes
        >>> target = torch.tensor([0, 1, 2, 2])
        >>> g = torch.Generator().manual_seed(0)
        >>> negatives = sample_other_classes(target, 3, 5, generator=g)
        >>> negatives.shape, bool((negatives != target[:, None]).all())
        (torch.Size([4, 5]), True)
    """
    check_int(num_classes, "num_classes", minimum=2)
    check_int(num_negatives, "num_negatives", minimum=1)
    target = check_class_index(target, "target", num_classes)
    if target.dim() != 1:
        raise ValueError(f"target must have shape (N,), got {tuple(target.shape)}")
    r = torch.randint(
        0,
        num_classes - 1,
        (target.shape[0], num_negatives),
        generator=generator,
        device=target.device,
    )
    return r + (r >= target[:, None]).long()


class LabelEmbeddingClassifier(nn.Module):
    r"""A multi-label classifier that scores each class by the cosine to a learned embedding.

    An encoder maps a sample to :math:`f \in \mathbb{R}^D`; class :math:`k` has a constrained
    embedding :math:`\tilde c_k` (norm ``radius``). Class :math:`k` gets the score
    :math:`\sigma(s \cos(f, \tilde c_k))`, independently of the other classes, so a sample can
    belong to several classes or to none. With the threshold 1/2 the label test is
    :math:`\cos(f, \tilde c_k) > 0` whatever the scale :math:`s`; the scale shapes the scores, not
    the labels. Train it with :meth:`loss`, the Min-Max loss.

    Args:
        in_features: size of the input samples.
        num_classes: K, at least 2.
        embedding_dim: D, the size of the features and class embeddings.
        encoder: a module mapping ``(N, in_features)`` to ``(N, embedding_dim)``; by default a
            single linear layer.
        distance: the distance of :func:`min_max_loss`.
        scale: :math:`s` in the scores.
        radius: the norm of the class embeddings.
        separation_weight: :math:`\lambda` of :func:`min_max_loss`.
        temperature: the push term's soft-minimum temperature, or ``None`` for the mean.
        device, dtype: of the default encoder and of the class embeddings.

    Shape:
        - input: ``(N, in_features)``; forward returns the features ``(N, embedding_dim)``;
          :meth:`scores` and :meth:`predict_labels` return ``(N, num_classes)``.

    Examples:
        >>> import torch
        >>> from companion.minmax import LabelEmbeddingClassifier
        >>> model = LabelEmbeddingClassifier(8, 3, 4)
        >>> x, target = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
        >>> model.loss(x, target).backward()  # train with the Min-Max loss
        >>> model.scores(x).shape, model.predict_labels(x).dtype
        (torch.Size([5, 3]), torch.bool)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        embedding_dim: int,
        encoder: nn.Module | None = None,
        *,
        distance: str = "cosine",
        scale: float = 5.0,
        radius: float = 1.0,
        separation_weight: float = 1.0,
        temperature: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int(in_features, "in_features", minimum=1)
        check_int(num_classes, "num_classes", minimum=2)
        check_int(embedding_dim, "embedding_dim", minimum=1)
        _check_distance(distance)
        _check_options(radius, temperature)
        self.encoder = (
            nn.Linear(in_features, embedding_dim, device=device, dtype=dtype)
            if encoder is None
            else encoder
        )
        #: The unconstrained class embeddings; use :attr:`class_embeddings` for the constrained.
        self.weight = nn.Parameter(
            torch.randn(num_classes, embedding_dim, device=device, dtype=dtype)
        )
        self.distance = distance
        self.scale = check_positive(scale, "scale")
        self.radius = radius
        self.separation_weight = check_positive(
            separation_weight, "separation_weight", allow_zero=True
        )
        self.temperature = temperature

    @property
    def class_embeddings(self) -> Tensor:
        """The constrained class embeddings, shape ``(K, D)``, each of norm ``radius``."""
        return _constrain(self.weight, self.radius)

    def forward(self, input: Tensor) -> Tensor:
        """The features :math:`f`, shape ``(N, embedding_dim)``."""
        check_tensor(input, "input", ndim=2)
        check_finite(input, "input")
        features: Tensor = self.encoder(input)
        return features

    def scores(self, input: Tensor) -> Tensor:
        r"""Per-class scores :math:`\sigma(s\cos(f, \tilde c_k))`, shape ``(N, K)``, in (0, 1)."""
        f = normalize(self(input), dim=-1)
        c = normalize(self.weight, dim=-1)
        return torch.sigmoid(self.scale * f @ c.T)

    def predict_labels(self, input: Tensor, threshold: float = 0.5) -> Tensor:
        """Boolean label matrix, shape ``(N, K)``: which classes score above ``threshold``."""
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        return self.scores(input) > threshold

    def loss(
        self,
        input: Tensor,
        target: Tensor,
        negatives: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """The Min-Max loss of the batch ``input`` with class indices ``target``."""
        return min_max_loss(
            self(input),
            self.weight,
            target,
            self.distance,
            negatives,
            reduction,
            separation_weight=self.separation_weight,
            radius=self.radius,
            temperature=self.temperature,
        )
