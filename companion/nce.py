r"""Training a softmax over a huge vocabulary without computing the softmax.

A classifier over :math:`C` classes with an output layer ``weight`` of shape ``(C, dim)`` and
``bias`` of shape ``(C,)`` scores class :math:`w` for an input :math:`h` as
:math:`s(w) = \langle h, W_w \rangle + b_w`. The full softmax cross-entropy needs every score,
a ``(B, C)`` matrix per batch. The losses here touch only ``B + S`` rows of the output layer:
the ``B`` targets and ``S`` negative classes drawn from a noise distribution :math:`q` by a
sampler. The negatives are *shared* by the whole batch, as in TensorFlow's
``tf.nn.nce_loss`` / ``tf.nn.sampled_softmax_loss``, so the scores of the negatives are one
``(B, dim) @ (dim, S)`` matrix product.

The negatives are drawn **with replacement**, so the expected number of times class :math:`w`
appears among them is exactly :math:`S\,q(w)`. Every correction below subtracts the log of that
expected count, :math:`\log(S\,q(w))`. (TensorFlow's built-in default sampler draws *unique*
negatives and reports approximate inclusion probabilities instead; with replacement the count
is exact and the samplers stay simple.)

* :func:`nce_loss`: noise-contrastive estimation (Gutmann and Hyvärinen, 2010; Mnih and Teh,
  2012). A logistic classifier tells the target from the negatives using the logit
  :math:`\Delta(w) = s(w) - \log(S\,q(w))`; at the optimum :math:`e^{s(w)}` is the normalised
  model probability.
* :func:`negative_sampling_loss`: the same classifier without the :math:`\log(S\,q)` term
  (Mikolov et al., 2013). Cheaper to explain, but its optimum is
  :math:`s(w) = \log p(w) - \log(S\,q(w))`, not :math:`\log p(w)`.
* :func:`sampled_softmax_loss`: a softmax over the target and the negatives, each logit
  corrected by :math:`-\log(S\,q(w))` (Bengio and Senécal, 2008; Jean et al., 2015).
* :func:`full_softmax_loss`: the exact cross-entropy over all classes, the baseline.

Samplers: :class:`UniformSampler`, :class:`UnigramSampler` (counts raised to a power, 0.75 as
in word2vec) and :class:`LogUniformSampler` (Zipf's law for frequency-sorted vocabularies).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from companion._validate import (
    check_class_index,
    check_int,
    check_positive,
    check_reduction,
    check_same_dtype_device,
    check_shape,
    check_tensor,
    reduce_loss,
)

__all__ = [
    "CandidateSampler",
    "LogUniformSampler",
    "UniformSampler",
    "UnigramSampler",
    "full_softmax_loss",
    "nce_loss",
    "negative_sampling_loss",
    "sampled_softmax_loss",
]


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


class CandidateSampler(ABC):
    """A noise distribution :math:`q` over ``num_classes`` classes that draws negatives.

    Subclasses implement :meth:`sample` (draws with replacement) and :meth:`log_prob`. Drawn
    classes and log-probabilities live on :attr:`device`.
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None) -> None:
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        #: dtype of the log-probabilities: float64, except on Apple's MPS, which has none
        self.dtype = torch.float32 if self.device.type == "mps" else torch.float64

    @abstractmethod
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num_samples`` classes independently from :math:`q` (with replacement).

        Args:
            num_samples: how many classes to draw, at least 1.
            generator: a torch generator on :attr:`device`, for reproducible draws.

        Returns:
            A long tensor of shape ``(num_samples,)`` on :attr:`device`.
        """

    @abstractmethod
    def log_prob(self, classes: Tensor) -> Tensor:
        r"""The log-probability :math:`\log q(w)` of each class in ``classes``.

        Returned in :attr:`dtype` (float64, so that the correction is exact; the losses cast it
        to the dtype of their input).

        Args:
            classes: a long tensor of class indices in ``[0, num_classes)``, any shape.
        """

    def probs(self) -> Tensor:
        """The whole distribution :math:`q` as a vector of length ``num_classes``."""
        classes = torch.arange(self.num_classes, device=self.device)
        return self.log_prob(classes).exp()

    def _check_classes(self, classes: Tensor) -> Tensor:
        if not isinstance(classes, Tensor):
            raise TypeError(f"classes must be a torch.Tensor, got {type(classes).__name__}")
        if classes.numel() == 0:
            return classes
        return check_class_index(classes, "classes", self.num_classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes}, device={self.device})"


def _check_num_samples(num_samples: object) -> int:
    return check_int(num_samples, "num_samples", minimum=1)


class UniformSampler(CandidateSampler):
    r"""Every class equally likely: :math:`q(w) = 1/C`.

    Args:
        num_classes: the number of classes :math:`C`.
        device: where drawn classes and log-probabilities live (default CPU).
    """

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        n = _check_num_samples(num_samples)
        return torch.randint(self.num_classes, (n,), generator=generator, device=self.device)

    def log_prob(self, classes: Tensor) -> Tensor:
        classes = self._check_classes(classes)
        value = -math.log(self.num_classes)
        return torch.full(classes.shape, value, dtype=self.dtype, device=classes.device)


class UnigramSampler(CandidateSampler):
    r"""Classes drawn in proportion to a power of their counts: :math:`q(w) \propto c_w^{\alpha}`.

    With ``power=1`` this is the unigram distribution of the training data; word2vec uses
    ``power=0.75`` (Mikolov et al., 2013), which flattens it so that rare words are drawn more
    often than their frequency alone would give.

    Args:
        counts: how often each class occurs, a 1-d tensor or sequence of positive numbers (one
            per class). A class with count 0 would never be drawn and would have
            :math:`\log q = -\infty`; drop it from the vocabulary or add a pseudo-count.
        power: the exponent :math:`\alpha`, non-negative (0 gives the uniform distribution).
        device: where the table and drawn classes live (default: the device of ``counts`` if it
            is a tensor, otherwise CPU).
    """

    def __init__(
        self,
        counts: Tensor | Sequence[float],
        power: float = 0.75,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(counts, Tensor):
            if counts.is_complex() or counts.dtype == torch.bool:
                raise TypeError(f"counts must hold real numbers, got dtype {counts.dtype}")
            table = counts.detach().to(torch.float64)
            if device is None:
                device = counts.device
        elif isinstance(counts, Sequence) and not isinstance(counts, str):
            table = torch.tensor(list(counts), dtype=torch.float64)
        else:
            raise TypeError(
                f"counts must be a 1-d tensor or a sequence of numbers, got {type(counts).__name__}"
            )
        check_tensor(table, "counts", ndim=1)
        if not bool(torch.isfinite(table).all()):
            raise ValueError("counts must be finite, got NaN or infinite entries")
        if bool((table <= 0).any()):
            bad = int(torch.nonzero(table <= 0)[0, 0])
            raise ValueError(
                f"counts must be positive for every class, got {float(table[bad]):g} for class "
                f"{bad}; drop classes that never occur or add a pseudo-count"
            )
        self.power = check_positive(power, "power", allow_zero=True)
        super().__init__(table.numel(), device)
        log_weights = self.power * torch.log(table.to(self.device, self.dtype))
        self._log_q = log_weights - torch.logsumexp(log_weights, dim=0)  # sums to 1
        self._cdf = torch.cumsum(self._log_q.exp(), dim=0)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        n = _check_num_samples(num_samples)
        # Inversion: the first class whose cumulative probability exceeds u ~ U(0, total).
        u = torch.rand(n, generator=generator, dtype=self.dtype, device=self.device)
        drawn = torch.searchsorted(self._cdf, u * self._cdf[-1], right=True)
        return drawn.clamp_(max=self.num_classes - 1)

    def log_prob(self, classes: Tensor) -> Tensor:
        classes = self._check_classes(classes)
        return self._log_q[classes]

    def __repr__(self) -> str:
        return (
            f"UnigramSampler(num_classes={self.num_classes}, power={self.power}, "
            f"device={self.device})"
        )


class LogUniformSampler(CandidateSampler):
    r"""The log-uniform (Zipfian) distribution :math:`q(w) = \log\frac{w + 2}{w + 1} / \log(C + 1)`.

    Class 0 is the most likely and the probabilities fall roughly like :math:`1/(w + 1)`,
    which matches word frequencies when the vocabulary is sorted from most to least frequent
    (it is TensorFlow's ``log_uniform_candidate_sampler``). If your classes are not sorted by
    frequency, use :class:`UnigramSampler` instead.

    Drawing is exact by inversion: for :math:`u \sim U(0, 1)`,
    :math:`\lfloor (C + 1)^{u} \rfloor - 1` has exactly this distribution.

    Args:
        num_classes: the number of classes :math:`C`.
        device: where drawn classes and log-probabilities live (default CPU).
    """

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        n = _check_num_samples(num_samples)
        u = torch.rand(n, generator=generator, dtype=self.dtype, device=self.device)
        drawn = torch.floor(torch.exp(u * math.log1p(self.num_classes))).long() - 1
        return drawn.clamp_(0, self.num_classes - 1)

    def log_prob(self, classes: Tensor) -> Tensor:
        classes = self._check_classes(classes)
        k = classes.to(self.dtype)
        return torch.log(torch.log1p(1.0 / (k + 1.0))) - math.log(math.log1p(self.num_classes))


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _check_output_layer(input: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor) -> None:
    check_tensor(input, "input", ndim=2)
    # The layer may hold millions of rows: scanning it for NaN on every step would cost as much
    # as the loss itself, so only the rows a batch uses are checked (in _sampled_logits).
    check_tensor(weight, "weight", ndim=2, allow_nan=True)
    check_same_dtype_device(input, "input", weight, "weight")
    if weight.shape[1] != input.shape[1]:
        raise ValueError(
            f"weight must have shape (num_classes, {input.shape[1]}) to match input "
            f"{tuple(input.shape)}, got {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, allow_nan=True)
        check_same_dtype_device(input, "input", bias, "bias")
        check_shape(bias, "bias", (weight.shape[0],))
    check_class_index(target, "target", weight.shape[0], batch_shape=(input.shape[0],))
    if target.device != input.device:
        raise ValueError(
            f"target must be on the same device as input ({input.device}), got {target.device}"
        )


def _softplus(x: Tensor) -> Tensor:
    # log(1 + e^x) = logaddexp(x, 0): exact for every x (F.softplus returns x itself above 20)
    # and one fused kernel; the masked logits of accidental hits give 0 with gradient 0.
    return torch.logaddexp(x, x.new_zeros(()))


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" (the current device) and "cuda:0" name the same place when the index is missing
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_no_nan(used: Tensor, name: str) -> None:
    if bool(torch.isnan(used.detach()).any()):
        raise ValueError(f"{name} contains NaN in a row used by this batch")


def _sampled_logits(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    sampler: CandidateSampler,
    num_samples: int,
    *,
    subtract_log_q: bool,
    correct_target: bool,
    remove_accidental_hits: bool,
    sparse: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Validate, draw the shared negatives and return the ``(B,)`` and ``(B, S)`` logits."""
    _check_output_layer(input, weight, bias, target)
    if not isinstance(sampler, CandidateSampler):
        raise TypeError(
            f"sampler must be a companion.nce.CandidateSampler, got {type(sampler).__name__}"
        )
    if sampler.num_classes != weight.shape[0]:
        raise ValueError(
            f"sampler must cover the {weight.shape[0]} classes of weight, "
            f"got a sampler over {sampler.num_classes}"
        )
    if not _same_device(sampler.device, input.device):
        raise ValueError(
            f"sampler must be on the same device as input ({input.device}), got {sampler.device}"
        )
    num_samples = _check_num_samples(num_samples)
    if not isinstance(sparse, bool):
        raise TypeError(f"sparse must be a bool, got {type(sparse).__name__}")

    batch = input.shape[0]
    negatives = sampler.sample(num_samples, generator=generator)  # (S,)
    ids = torch.cat([target, negatives])  # (B + S,): the only rows of the layer we touch
    rows = F.embedding(ids, weight, sparse=True) if sparse else weight.index_select(0, ids)
    _check_no_nan(rows, "weight")
    true_w, neg_w = rows[:batch], rows[batch:]
    true_logits = (input * true_w).sum(dim=1)  # (B,)
    neg_logits = input @ neg_w.T  # (B, S): one matrix product for the shared negatives
    if bias is not None:
        b = bias.index_select(0, ids)
        _check_no_nan(b, "bias")
        true_logits = true_logits + b[:batch]
        neg_logits = neg_logits + b[batch:]
    if subtract_log_q:
        # log of the expected count S q(w) of each class among S draws with replacement
        log_count = (sampler.log_prob(ids) + math.log(num_samples)).to(input.dtype)
        neg_logits = neg_logits - log_count[batch:]
        if correct_target:
            true_logits = true_logits - log_count[:batch]
    if remove_accidental_hits:
        hits = negatives[None, :] == target[:, None]  # (B, S)
        very_negative = torch.finfo(neg_logits.dtype).min
        neg_logits = neg_logits.masked_fill(hits, very_negative)
    return true_logits, neg_logits


def nce_loss(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    sampler: CandidateSampler,
    num_samples: int,
    remove_accidental_hits: bool = False,
    reduction: str = "mean",
    *,
    sparse: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Noise-contrastive estimation with ``num_samples`` negatives shared by the batch.

    With :math:`S` negatives :math:`n_1, \dots, n_S` drawn from :math:`q` and
    :math:`\Delta_i(w) = s_i(w) - \log(S\,q(w))`, row :math:`i` with target :math:`t_i` costs

    .. math::
        \ell_i = -\log\sigma\bigl(\Delta_i(t_i)\bigr)
                 - \sum_{j=1}^{S} \log\bigl(1 - \sigma(\Delta_i(n_j))\bigr)
               = \operatorname{softplus}(-\Delta_i(t_i))
                 + \sum_{j} \operatorname{softplus}(\Delta_i(n_j)),

    the binary cross-entropy of a classifier whose posterior of "data" is
    :math:`p(w) / (p(w) + S\,q(w))` when the model is :math:`p(w) = e^{s(w)}`. Its population
    minimiser is :math:`s(w) = \log p_{\text{data}}(w)`: the model learns normalised scores
    without ever computing the normaliser (Gutmann and Hyvärinen, 2010; Mnih and Teh, 2012).
    Given the same negatives and expected counts, this is TensorFlow's ``tf.nn.nce_loss`` with
    ``num_true=1``.

    Args:
        input: the hidden activations, shape ``(B, dim)``, floating.
        weight: the output layer, shape ``(C, dim)``, same dtype and device as ``input``.
        bias: the output bias, shape ``(C,)``, or ``None``.
        target: the true class of each row, shape ``(B,)``, long, in ``[0, C)``.
        sampler: the noise distribution :math:`q` (a :class:`CandidateSampler` over ``C``
            classes on ``input``'s device).
        num_samples: :math:`S`, the number of negatives drawn for the whole batch.
        remove_accidental_hits: drop a negative that equals the row's target (its logit is set
            to the most negative finite number, so its term and gradient are 0). Off by default:
            such a negative is a legitimate noise draw, and dropping it moves the minimiser to
            :math:`\log p - \log(1 - p)`.
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` over rows or ``"sum"``.
        sparse: if True, ``weight``'s gradient is a sparse tensor holding only the ``B + S``
            rows touched (as with ``nn.Embedding(sparse=True)``); the bias gradient stays dense.
        generator: a torch generator on ``input``'s device for reproducible negatives.
    """
    check_reduction(reduction)
    true_logits, neg_logits = _sampled_logits(
        input,
        weight,
        bias,
        target,
        sampler,
        num_samples,
        subtract_log_q=True,
        correct_target=True,
        remove_accidental_hits=remove_accidental_hits,
        sparse=sparse,
        generator=generator,
    )
    loss = _softplus(-true_logits) + _softplus(neg_logits).sum(dim=1)
    return reduce_loss(loss, reduction)


def negative_sampling_loss(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    sampler: CandidateSampler,
    num_samples: int,
    remove_accidental_hits: bool = False,
    reduction: str = "mean",
    *,
    sparse: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Negative sampling (word2vec): :func:`nce_loss` without the :math:`\log(S\,q)` term.

    .. math::
        \ell_i = -\log\sigma\bigl(s_i(t_i)\bigr) - \sum_{j=1}^{S} \log\sigma\bigl(-s_i(n_j)\bigr).

    Its population minimiser is :math:`s(w) = \log p_{\text{data}}(w) - \log(S\,q(w))`, so
    :math:`e^{s}` is *not* the data distribution (unless :math:`S\,q(w) = 1` for every class).
    That is fine for learning embeddings, which is what Mikolov et al. (2013) used it for, and
    wrong for estimating probabilities. Arguments as in :func:`nce_loss`; the sampler's
    :math:`q` only decides which negatives are drawn.
    """
    check_reduction(reduction)
    true_logits, neg_logits = _sampled_logits(
        input,
        weight,
        bias,
        target,
        sampler,
        num_samples,
        subtract_log_q=False,
        correct_target=False,
        remove_accidental_hits=remove_accidental_hits,
        sparse=sparse,
        generator=generator,
    )
    loss = _softplus(-true_logits) + _softplus(neg_logits).sum(dim=1)
    return reduce_loss(loss, reduction)


def sampled_softmax_loss(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    sampler: CandidateSampler,
    num_samples: int,
    remove_accidental_hits: bool = True,
    reduction: str = "mean",
    *,
    subtract_log_q: bool = True,
    sparse: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Sampled softmax: cross-entropy over the target and ``num_samples`` shared negatives.

    Row :math:`i` is a softmax over :math:`1 + S` logits, the target first: its own score
    :math:`s_i(t_i)`, then each negative's score corrected by the log of its expected count,
    :math:`s_i(n_j) - \log(S\,q(n_j))`, with negatives equal to the target removed:

    .. math::
        \ell_i = -s_i(t_i) + \log \hat Z_i, \qquad
        \hat Z_i = e^{s_i(t_i)} + \sum_{j:\, n_j \ne t_i} \frac{e^{s_i(n_j)}}{S\,q(n_j)}.

    :math:`\hat Z_i` is an unbiased importance-sampling estimate of the full normaliser
    :math:`Z_i = \sum_w e^{s_i(w)}` for every :math:`S`: the target's term is known exactly and
    the negatives estimate the sum over the other classes (Bengio and Senécal, 2008; Jean et
    al., 2015). The loss is still biased for finite :math:`S`, because :math:`\log` is concave
    (it underestimates the full loss on average), and the bias vanishes as :math:`S` grows.

    This differs from TensorFlow's ``tf.nn.sampled_softmax_loss`` in one place: TensorFlow also
    subtracts :math:`\log Q(t_i)` from the *target's* logit. The target is in the softmax with
    probability 1, not :math:`Q(t_i)`, and with accidental hits removed that correction makes
    the expected normaliser :math:`Z_i + e^{s_i(t_i)}\bigl(1/Q(t_i) - 1\bigr)`, which does
    not tend to :math:`Z_i` as :math:`S` grows (see Khrylchenko et al., 2025, for the same
    observation about in-batch negatives).

    Args:
        subtract_log_q: subtract :math:`\log(S\,q(n_j))` from each negative's logit (default
            True); False gives the uncorrected, biased variant, for comparison.
        remove_accidental_hits: drop a negative equal to the row's target (default True). Its
            logit is set to the most negative finite number, so its term and gradient are 0.
            Keeping it counts the target twice in expectation.

    The other arguments are as in :func:`nce_loss`.
    """
    check_reduction(reduction)
    if not isinstance(subtract_log_q, bool):
        raise TypeError(f"subtract_log_q must be a bool, got {type(subtract_log_q).__name__}")
    true_logits, neg_logits = _sampled_logits(
        input,
        weight,
        bias,
        target,
        sampler,
        num_samples,
        subtract_log_q=subtract_log_q,
        correct_target=False,
        remove_accidental_hits=remove_accidental_hits,
        sparse=sparse,
        generator=generator,
    )
    all_logits = torch.cat([true_logits[:, None], neg_logits], dim=1)  # (B, 1 + S)
    loss = torch.logsumexp(all_logits, dim=1) - true_logits
    return reduce_loss(loss, reduction)


def full_softmax_loss(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    reduction: str = "mean",
) -> Tensor:
    r"""The exact softmax cross-entropy over all ``C`` classes of the output layer.

    .. math::
        \ell_i = -s_i(t_i) + \log \sum_{w=1}^{C} e^{s_i(w)}, \qquad
        s_i = W h_i + b.

    Materialises the ``(B, C)`` logit matrix; the baseline that the sampled losses avoid. In
    production, ``F.cross_entropy(F.linear(input, weight, bias), target)`` computes the same.

    Args:
        input: shape ``(B, dim)``; weight: ``(C, dim)``; bias: ``(C,)`` or ``None``;
        target: ``(B,)`` long in ``[0, C)``; reduction: ``"none" | "mean" | "sum"``.
    """
    check_reduction(reduction)
    _check_output_layer(input, weight, bias, target)
    _check_no_nan(weight, "weight")
    if bias is not None:
        _check_no_nan(bias, "bias")
    logits = F.linear(input, weight, bias)  # (B, C)
    true_logits = logits.gather(1, target[:, None]).squeeze(1)
    loss = torch.logsumexp(logits, dim=1) - true_logits
    return reduce_loss(loss, reduction)
