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

Every loss takes ``(input, weight, target, ...)`` in the order of torch's
:func:`torch.nn.functional.linear_cross_entropy`, with the output bias a keyword-only
``bias=`` (torch's ``linear_bias``).

Samplers: :class:`UniformSampler`, :class:`UnigramSampler` (counts raised to a power, 0.75 as
in word2vec) and :class:`LogUniformSampler` (Zipf's law for frequency-sorted vocabularies).

In a training loop: with value checks off (:func:`companion.set_value_checks`), one forward and
backward pass of the sampled losses makes no host sync, and they compile with
``torch.compile(fullgraph=True)``. A ``torch.Generator`` cannot enter a compiled graph: under
``torch.compile`` draw with ``generator=None`` (the global random state), or draw the negatives
outside the compiled function and pass them as ``negatives=``.

Non-finite inputs: NaN or :math:`\pm\infty` in ``input``, in the rows of ``weight`` and the
entries of ``bias`` that a batch uses, is refused with a ``ValueError`` naming the argument
while value checks are on (a score of :math:`+\infty` has no finite loss and
:math:`\infty - \infty` no value at all); with value checks off such inputs give NaN or
infinite losses, as in torch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from companion._validate import (
    Reduction,
    check_bool,
    check_class_index,
    check_finite,
    check_int,
    check_positive,
    check_reduction,
    check_same_dtype_device,
    check_shape,
    check_tensor,
    reduce_loss,
)
from companion.sigmoid import softplus_values

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
    classes and log-probabilities live on :attr:`device`. Both methods use only torch
    operations on tensors, so a loss that draws inside ``torch.compile`` traces them (with
    ``generator=None``).

    Args:
        num_classes: the number of classes :math:`C`, at least 1.
        device: where drawn classes and log-probabilities live (default CPU).

    Shape:
        - :meth:`sample` returns :math:`(S,)` class indices (int64) for ``num_samples`` = S.
        - :meth:`log_prob` maps class indices of any shape to float64 values of that shape.
        - :meth:`probs` returns :math:`(C,)`.

    Examples:
        A sampler that always draws class 0 (a subclass needs only the two methods):

        >>> import math, torch
        >>> from companion.nce import CandidateSampler
        >>> class Always0(CandidateSampler):
        ...     def sample(self, num_samples, generator=None):
        ...         return torch.zeros(num_samples, dtype=torch.long, device=self.device)
        ...     def log_prob(self, classes):
        ...         return torch.where(classes == 0, 0.0, -math.inf).double()
        >>> Always0(3).probs()
        tensor([1., 0., 0.], dtype=torch.float64)
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

    def _checked_classes(self, classes: Tensor) -> Tensor:
        # the dtype always, the range only with value checks on (a host sync)
        if isinstance(classes, Tensor) and classes.numel() == 0:
            return classes.long()
        return check_class_index(classes, "classes", self.num_classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes}, device={self.device})"


def _num_samples(num_samples: object) -> int:
    return check_int(num_samples, "num_samples", minimum=1)


class UniformSampler(CandidateSampler):
    r"""Every class equally likely: :math:`q(w) = 1/C`.

    Args:
        num_classes: the number of classes :math:`C`.
        device: where drawn classes and log-probabilities live (default CPU).

    Shape:
        As in :class:`CandidateSampler`: ``sample(S)`` gives :math:`(S,)`, ``log_prob`` keeps
        the shape of its input.

    Examples:
        >>> import torch
        >>> from companion.nce import UniformSampler
        >>> sampler = UniformSampler(4)
        >>> sampler.sample(6, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([6])
        >>> sampler.log_prob(torch.tensor([0, 3])).exp()
        tensor([0.2500, 0.2500], dtype=torch.float64)
    """

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        n = _num_samples(num_samples)
        return torch.randint(self.num_classes, (n,), generator=generator, device=self.device)

    def log_prob(self, classes: Tensor) -> Tensor:
        classes = self._checked_classes(classes)
        value = -math.log(self.num_classes)
        return torch.full(classes.shape, value, dtype=self.dtype, device=classes.device)


class UnigramSampler(CandidateSampler):
    r"""Classes drawn in proportion to a power of their counts: :math:`q(w) \propto c_w^{\alpha}`.

    With ``power=1`` this is the unigram distribution of the training data; word2vec uses
    ``power=0.75`` (Mikolov et al., 2013), which flattens it so that rare words are drawn more
    often than their frequency alone would give.

    The counts are checked once, when the sampler is built (finite and positive; this reads
    them whatever the value-check setting, since a bad table would silently skew every later
    step, except while ``torch.compile`` traces); drawing and :meth:`log_prob` make no host
    sync.

    Args:
        counts: how often each class occurs, a 1-d tensor or sequence of positive numbers (one
            per class). A class with count 0 would never be drawn and would have
            :math:`\log q = -\infty`; drop it from the vocabulary or add a pseudo-count.
        power: the exponent :math:`\alpha`, non-negative (0 gives the uniform distribution).
        device: where the table and drawn classes live (default: the device of ``counts`` if it
            is a tensor, otherwise CPU).

    Shape:
        - counts: :math:`(C,)`.
        - As in :class:`CandidateSampler`: ``sample(S)`` gives :math:`(S,)`, ``log_prob`` keeps
          the shape of its input.

    Examples:
        >>> import torch
        >>> from companion.nce import UnigramSampler
        >>> sampler = UnigramSampler([1.0, 3.0], power=1.0)
        >>> sampler.probs()
        tensor([0.2500, 0.7500], dtype=torch.float64)
        >>> sampler.sample(5, generator=torch.Generator().manual_seed(0)).dtype
        torch.int64
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
        check_tensor(table, "counts", ndim=1, allow_nan=True)
        # Read once at construction, with value checks on or off (a table with NaN, infinite
        # or non-positive counts would make every later step silently wrong), but not while
        # torch.compile traces, which cannot branch on data.
        tracing = torch.compiler.is_compiling()
        if not tracing and bool(torch.isnan(table).any()):
            raise ValueError("counts contains NaN")
        if not tracing and not bool(torch.isfinite(table).all()):
            raise ValueError("counts must be finite, got infinite entries")
        if not tracing and bool((table <= 0).any()):
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
        n = _num_samples(num_samples)
        # Inversion: the first class whose cumulative probability exceeds u ~ U(0, total).
        u = torch.rand(n, generator=generator, dtype=self.dtype, device=self.device)
        drawn = torch.searchsorted(self._cdf, u * self._cdf[-1], right=True)
        return drawn.clamp_(max=self.num_classes - 1)

    def log_prob(self, classes: Tensor) -> Tensor:
        classes = self._checked_classes(classes)
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

    Shape:
        As in :class:`CandidateSampler`: ``sample(S)`` gives :math:`(S,)`, ``log_prob`` keeps
        the shape of its input.

    Examples:
        >>> import torch
        >>> from companion.nce import LogUniformSampler
        >>> sampler = LogUniformSampler(3)
        >>> sampler.probs()  # log(2)/log(4), log(3/2)/log(4), log(4/3)/log(4)
        tensor([0.5000, 0.2925, 0.2075], dtype=torch.float64)
        >>> draws = sampler.sample(1000, generator=torch.Generator().manual_seed(0))
        >>> bool((draws >= 0).all() and (draws < 3).all())
        True
    """

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        n = _num_samples(num_samples)
        u = torch.rand(n, generator=generator, dtype=self.dtype, device=self.device)
        drawn = torch.floor(torch.exp(u * math.log1p(self.num_classes))).long() - 1
        return drawn.clamp_(0, self.num_classes - 1)

    def log_prob(self, classes: Tensor) -> Tensor:
        classes = self._checked_classes(classes)
        k = classes.to(self.dtype)
        return torch.log(torch.log1p(1.0 / (k + 1.0))) - math.log(math.log1p(self.num_classes))


# --------------------------------------------------------------------------------------------
# The shared-negatives core: one fused step per loss, written by hand for speed
# --------------------------------------------------------------------------------------------
#
# For B rows and S shared negatives the losses are dominated by the (B, S) logit matrix. With
# plain autograd every elementwise step on it (adding the bias, subtracting log(S q), masking
# the accidental hits, concatenating the target column, the softmax or softplus and their
# backward passes) allocates and traverses another (B, S) tensor. The two autograd functions
# below build the matrix once (the corrections are one (S,) row added by the product itself,
# the hits are masked in place) and write the gradient with respect to the logits in one
# (B, S) buffer: the exact gradient, with far fewer passes over memory.
#
# Second derivatives (create_graph=True, a gradient penalty) stay exact: the backward pass then
# recomputes the logits from the saved inputs with differentiable operations, so autograd can
# differentiate the backward pass itself.


def _negative_logits_into(
    out: Tensor, input: Tensor, neg_weight: Tensor, neg_shift: Tensor | None, hits: Tensor | None
) -> None:
    """Write ``input @ neg_weight.T + neg_shift`` into ``out`` (B, S), hits masked."""
    if neg_shift is None:
        out.addmm_(input, neg_weight.T, beta=0)  # beta=0: out's old contents are never read
    else:
        out.copy_(neg_shift.expand_as(out))
        out.addmm_(input, neg_weight.T)
    if hits is not None:
        # the most negative finite number: its softmax weight and sigmoid are exactly 0, so a
        # removed negative adds nothing to the loss or its gradient
        out.masked_fill_(hits, torch.finfo(out.dtype).min)


def _logits(
    input: Tensor, rows: Tensor, shift: Tensor | None, hits: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The target logits (B,) and negative logits (B, S), out of place and differentiable."""
    batch = input.shape[0]
    true_logits = (input * rows[:batch]).sum(dim=1)
    if shift is None:
        neg_logits = input @ rows[batch:].T
    else:
        true_logits = true_logits + shift[:batch]
        neg_logits = torch.addmm(shift[batch:], input, rows[batch:].T)
    if hits is not None:
        neg_logits = neg_logits.masked_fill(hits, torch.finfo(neg_logits.dtype).min)
    return true_logits, neg_logits


def _input_grads(
    ctx: Any, grad_true: Tensor, grad_neg: Tensor, input: Tensor, rows: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for ``input``, ``rows`` and ``shift`` from d loss / d logits.

    ``grad_true`` (B,) and ``grad_neg`` (B, S) are the gradients with respect to the target
    and the negative logits. In place where autograd does not watch (no ``create_graph``).
    """
    batch = input.shape[0]
    true_w, neg_w = rows[:batch], rows[batch:]
    need_input, need_rows, need_shift = ctx.needs_input_grad[:3]
    grad_input = grad_rows = grad_shift = None
    if need_input:
        grad_input = grad_neg @ neg_w
        if torch.is_grad_enabled():
            grad_input = torch.addcmul(grad_input, grad_true[:, None], true_w)
        else:
            grad_input.addcmul_(grad_true[:, None], true_w)
    if need_rows:
        grad_rows = torch.cat([grad_true[:, None] * input, grad_neg.T @ input])
    if need_shift:
        grad_shift = torch.cat([grad_true, grad_neg.sum(0)])
    return grad_input, grad_rows, grad_shift


class _SampledSoftmaxCore(torch.autograd.Function):
    """``-log_softmax([target logit, negative logits])[:, 0]``, shape (B,).

    Inputs: ``input`` (B, D); ``rows`` (B + S, D), the targets' rows then the negatives';
    ``shift`` (B + S,) added to the logits (bias, ``-log(S q)``) or None; ``hits`` (B, S), the
    negatives to drop, or None.
    """

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, rows: Tensor, shift: Tensor | None, hits: Tensor | None
    ) -> Tensor:
        batch, num_neg = input.shape[0], rows.shape[0] - input.shape[0]
        logits = input.new_empty(batch, 1 + num_neg)  # the target in column 0
        true_logits = (input * rows[:batch]).sum(dim=1)
        if shift is not None:
            true_logits += shift[:batch]
        logits[:, 0] = true_logits
        neg_shift = None if shift is None else shift[batch:]
        _negative_logits_into(logits[:, 1:], input, rows[batch:], neg_shift, hits)
        log_p = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(log_p, input, rows, shift, hits)
        return -log_p[:, 0]

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        log_p, input, rows, shift, hits = ctx.saved_tensors
        # d loss_i / d logit_ij = p_ij - [j == 0]
        if torch.is_grad_enabled():  # create_graph=True: recompute, differentiably
            true_logits, neg_logits = _logits(input, rows, shift, hits)
            log_p = torch.log_softmax(torch.cat([true_logits[:, None], neg_logits], 1), dim=1)
            grad_logits = log_p.exp() * grad[:, None]
        else:
            grad_logits = log_p.exp().mul_(grad[:, None])
        grad_true = grad_logits[:, 0] - grad
        return (*_input_grads(ctx, grad_true, grad_logits[:, 1:], input, rows), None)


class _BinaryCore(torch.autograd.Function):
    """``softplus(-target logit) + softplus(negative logits).sum(1)``, shape (B,): NCE and
    negative sampling. Inputs as in :class:`_SampledSoftmaxCore`."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, rows: Tensor, shift: Tensor | None, hits: Tensor | None
    ) -> Tensor:
        batch = input.shape[0]
        true_logits = (input * rows[:batch]).sum(dim=1)
        if shift is not None:
            true_logits += shift[:batch]
        neg_logits = input.new_empty(batch, rows.shape[0] - batch)
        neg_shift = None if shift is None else shift[batch:]
        _negative_logits_into(neg_logits, input, rows[batch:], neg_shift, hits)
        ctx.save_for_backward(true_logits, neg_logits, input, rows, shift, hits)
        return softplus_values(-true_logits) + softplus_values(neg_logits).sum(dim=1)

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        true_logits, neg_logits, input, rows, shift, hits = ctx.saved_tensors
        # softplus' = sigmoid: d/d true = -sigmoid(-true), d/d negative = sigmoid(negative)
        if torch.is_grad_enabled():  # create_graph=True: recompute, differentiably
            true_logits, neg_logits = _logits(input, rows, shift, hits)
            grad_neg = torch.sigmoid(neg_logits) * grad[:, None]
        else:
            grad_neg = torch.sigmoid(neg_logits).mul_(grad[:, None])
        grad_true = -torch.sigmoid(-true_logits) * grad
        return (*_input_grads(ctx, grad_true, grad_neg, input, rows), None)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _check_output_layer(
    input: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor
) -> Tensor:
    """The always-on checks of the output layer and the target; returns the target as int64."""
    # NaN and infinities are refused by check_finite below (a value check), not here
    check_tensor(input, "input", ndim=2, allow_nan=True)
    # The layer may hold millions of rows: scanning it on every step would cost as much as the
    # loss itself, so only the rows a batch uses are checked (in _shared_negatives).
    check_tensor(weight, "weight", ndim=2, allow_nan=True)
    check_same_dtype_device(input, "input", weight, "weight")
    check_shape(weight, "weight", (weight.shape[0], input.shape[1]))
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, allow_nan=True)
        check_same_dtype_device(input, "input", bias, "bias")
        check_shape(bias, "bias", (weight.shape[0],))
    target = check_class_index(target, "target", weight.shape[0], batch_shape=(input.shape[0],))
    if target.device != input.device:
        raise ValueError(
            f"target must be on the same device as input ({input.device}), got {target.device}"
        )
    check_finite(input, "input")
    return target


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" (the current device) and "cuda:0" name the same place when the index is missing
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _draw(
    sampler: CandidateSampler,
    num_samples: int,
    num_classes: int,
    device: torch.device,
    negatives: Tensor | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Check the sampler and return the ``(S,)`` negatives, drawn now or given."""
    if not isinstance(sampler, CandidateSampler):
        raise TypeError(
            f"sampler must be a companion.nce.CandidateSampler, got {type(sampler).__name__}"
        )
    if sampler.num_classes != num_classes:
        raise ValueError(
            f"sampler must cover the {num_classes} classes of weight, "
            f"got a sampler over {sampler.num_classes}"
        )
    if not _same_device(sampler.device, device):
        raise ValueError(
            f"sampler must be on the same device as input ({device}), got {sampler.device}"
        )
    num_samples = _num_samples(num_samples)
    if negatives is None:
        negatives, name = sampler.sample(num_samples, generator=generator), "sampler.sample()"
    else:
        name = "negatives"
        if generator is not None:
            raise ValueError("generator must be None when negatives are given (nothing is drawn)")
    negatives = check_class_index(negatives, name, num_classes, batch_shape=(num_samples,))
    if negatives.device != device:
        raise ValueError(
            f"{name} must be on the same device as input ({device}), got {negatives.device}"
        )
    return negatives


def _shared_negatives(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    sampler: CandidateSampler,
    num_samples: int,
    *,
    log_q_for_negatives: bool,
    log_q_for_target: bool,
    remove_accidental_hits: object,
    sparse: object,
    negatives: Tensor | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Validate, draw the shared negatives and gather what the two cores need.

    Returns the rows of the layer ``(B + S, dim)`` (the targets', then the negatives'), the
    additive correction of their logits ``(B + S,)`` (bias and, where asked, ``-log(S q)``;
    None if there is neither) and the accidental-hit mask ``(B, S)`` (None if not removed).
    """
    target = _check_output_layer(input, weight, bias, target)
    remove_accidental_hits = check_bool(remove_accidental_hits, "remove_accidental_hits")
    sparse = check_bool(sparse, "sparse")
    negatives = _draw(sampler, num_samples, weight.shape[0], input.device, negatives, generator)

    batch = input.shape[0]
    ids = torch.cat([target, negatives])  # (B + S,): the only rows of the layer we touch
    rows = F.embedding(ids, weight, sparse=True) if sparse else weight.index_select(0, ids)
    check_finite(rows, "weight (the rows this batch uses)")
    shift: Tensor | None = None
    if bias is not None:
        shift = bias.index_select(0, ids)
        check_finite(shift, "bias (the entries this batch uses)")
    if log_q_for_negatives or log_q_for_target:
        # log of the expected count S q(w) of each class among S draws with replacement
        log_q = sampler.log_prob(ids if log_q_for_target else negatives)
        check_finite(log_q, "sampler.log_prob() of the drawn classes")
        log_count = (log_q + math.log(negatives.shape[0])).to(input.dtype)
        if not log_q_for_target:
            log_count = torch.cat([log_count.new_zeros(batch), log_count])
        elif not log_q_for_negatives:
            log_count[batch:] = 0
        shift = -log_count if shift is None else shift - log_count
    hits = negatives[None, :] == target[:, None] if remove_accidental_hits else None  # (B, S)
    return rows, shift, hits


def nce_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    sampler: CandidateSampler,
    num_samples: int,
    remove_accidental_hits: bool = False,
    reduction: Reduction = "mean",
    *,
    bias: Tensor | None = None,
    sparse: bool = False,
    negatives: Tensor | None = None,
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
        input: the hidden activations, shape ``(B, dim)``, floating, finite.
        weight: the output layer, shape ``(C, dim)``, same dtype and device as ``input``. Only
            the rows a batch uses are read (and checked for NaN and infinities).
        target: the true class of each row, shape ``(B,)``, int64 or int32, in ``[0, C)``.
        sampler: the noise distribution :math:`q` (a :class:`CandidateSampler` over ``C``
            classes on ``input``'s device).
        num_samples: :math:`S`, the number of negatives drawn for the whole batch.
        remove_accidental_hits: drop a negative that equals the row's target (its logit is set
            to the most negative finite number, so its term and gradient are 0). Off by default:
            such a negative is a legitimate noise draw, and dropping it moves the minimiser to
            :math:`\log p - \log(1 - p)`.
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` over rows or ``"sum"``.
        bias: the output bias, shape ``(C,)``, or ``None`` (keyword-only, as ``linear_bias`` of
            :func:`torch.nn.functional.linear_cross_entropy`).
        sparse: if True, ``weight``'s gradient is a sparse tensor holding only the ``B + S``
            rows touched (as with ``nn.Embedding(sparse=True)``); the bias gradient stays dense.
        negatives: the ``S`` negative classes, drawn beforehand from ``sampler`` (for example
            outside a ``torch.compile``-d function, with a generator); by default they are
            drawn here.
        generator: a torch generator on ``input``'s device for reproducible negatives (not
            under ``torch.compile``, which cannot trace one).

    Shape:
        - input: :math:`(B, D)`, the hidden activations.
        - weight: :math:`(C, D)`, the output layer (as ``nn.Linear(D, C).weight``).
        - target: :math:`(B,)`, int64 or int32 class indices.
        - bias: :math:`(C,)` or ``None``.
        - negatives (optional): :math:`(S,)` with :math:`S` = ``num_samples``.
        - output: a scalar, or :math:`(B,)` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.nce import LogUniformSampler, nce_loss
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(8, 16, generator=gen)
        >>> weight = torch.randn(10_000, 16, generator=gen).requires_grad_()
        >>> bias = torch.zeros(10_000, requires_grad=True)
        >>> target = torch.randint(10_000, (8,), generator=gen)
        >>> sampler = LogUniformSampler(10_000)
        >>> loss = nce_loss(x, weight, target, sampler, 64, bias=bias, generator=gen)
        >>> loss.shape
        torch.Size([])
        >>> loss.backward()
        >>> int(weight.grad.abs().sum(dim=1).count_nonzero()) <= 8 + 64  # rows touched
        True
        >>> per_row = nce_loss(
        ...     x, weight, target, sampler, 64, reduction="none", bias=bias, generator=gen
        ... )
        >>> per_row.shape
        torch.Size([8])
    """
    check_reduction(reduction)
    rows, shift, hits = _shared_negatives(
        input,
        weight,
        bias,
        target,
        sampler,
        num_samples,
        log_q_for_negatives=True,
        log_q_for_target=True,
        remove_accidental_hits=remove_accidental_hits,
        sparse=sparse,
        negatives=negatives,
        generator=generator,
    )
    loss: Tensor = _BinaryCore.apply(input, rows, shift, hits)  # type: ignore[no-untyped-call]
    return reduce_loss(loss, reduction)


def negative_sampling_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    sampler: CandidateSampler,
    num_samples: int,
    remove_accidental_hits: bool = False,
    reduction: Reduction = "mean",
    *,
    bias: Tensor | None = None,
    sparse: bool = False,
    negatives: Tensor | None = None,
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

    Shape:
        - input: :math:`(B, D)`, the hidden activations.
        - weight: :math:`(C, D)`, the output layer (as ``nn.Linear(D, C).weight``).
        - target: :math:`(B,)`, int64 or int32 class indices.
        - bias: :math:`(C,)` or ``None``.
        - negatives (optional): :math:`(S,)` with :math:`S` = ``num_samples``.
        - output: a scalar, or :math:`(B,)` with ``reduction="none"``.

    Examples:
        Skip-gram: centre-word vectors score context words through an output embedding.

        >>> import torch
        >>> from companion.nce import UnigramSampler, negative_sampling_loss
        >>> gen = torch.Generator().manual_seed(0)
        >>> centre = torch.randn(4, 8, generator=gen, requires_grad=True)
        >>> context = torch.nn.Embedding(100, 8, sparse=True)
        >>> noise = UnigramSampler(torch.arange(100.0, 0.0, -1.0), power=0.75)
        >>> words = torch.tensor([3, 14, 15, 92])
        >>> loss = negative_sampling_loss(
        ...     centre, context.weight, words, noise, 5, sparse=True, generator=gen
        ... )
        >>> loss.backward()
        >>> context.weight.grad.is_sparse, centre.grad.shape
        (True, torch.Size([4, 8]))
    """
    check_reduction(reduction)
    rows, shift, hits = _shared_negatives(
        input,
        weight,
        bias,
        target,
        sampler,
        num_samples,
        log_q_for_negatives=False,
        log_q_for_target=False,
        remove_accidental_hits=remove_accidental_hits,
        sparse=sparse,
        negatives=negatives,
        generator=generator,
    )
    loss: Tensor = _BinaryCore.apply(input, rows, shift, hits)  # type: ignore[no-untyped-call]
    return reduce_loss(loss, reduction)


def sampled_softmax_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    sampler: CandidateSampler,
    num_samples: int,
    remove_accidental_hits: bool = True,
    reduction: Reduction = "mean",
    *,
    bias: Tensor | None = None,
    subtract_log_q: bool = True,
    sparse: bool = False,
    negatives: Tensor | None = None,
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

    Infinite or NaN scores have no loss to return (:math:`\infty - \infty`): while value checks
    are on, NaN or :math:`\pm\infty` in ``input``, in the used rows of ``weight`` or entries of
    ``bias`` raises a ``ValueError`` naming the argument.

    Args:
        subtract_log_q: subtract :math:`\log(S\,q(n_j))` from each negative's logit (default
            True); False gives the uncorrected, biased variant, for comparison.
        remove_accidental_hits: drop a negative equal to the row's target (default True). Its
            logit is set to the most negative finite number, so its term and gradient are 0.
            Keeping it counts the target twice in expectation.

    The other arguments are as in :func:`nce_loss`.

    Shape:
        - input: :math:`(B, D)`, the hidden activations.
        - weight: :math:`(C, D)`, the output layer (as ``nn.Linear(D, C).weight``).
        - target: :math:`(B,)`, int64 or int32 class indices.
        - bias: :math:`(C,)` or ``None``.
        - negatives (optional): :math:`(S,)` with :math:`S` = ``num_samples``.
        - output: a scalar, or :math:`(B,)` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from companion.nce import LogUniformSampler, sampled_softmax_loss
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(8, 16, generator=gen, requires_grad=True)
        >>> weight = torch.randn(10_000, 16, generator=gen).requires_grad_()
        >>> target = torch.randint(10_000, (8,), generator=gen)
        >>> sampler = LogUniformSampler(10_000)
        >>> loss = sampled_softmax_loss(x, weight, target, sampler, 64, sparse=True, generator=gen)
        >>> loss.backward()
        >>> weight.grad.is_sparse, x.grad.shape
        (True, torch.Size([8, 16]))

        The same negatives drawn beforehand (what a ``torch.compile``-d step would take):

        >>> negatives = sampler.sample(64, generator=torch.Generator().manual_seed(1))
        >>> a = sampled_softmax_loss(x, weight, target, sampler, 64, negatives=negatives)
        >>> b = sampled_softmax_loss(x, weight, target, sampler, 64,
        ...                          generator=torch.Generator().manual_seed(1))
        >>> torch.equal(a, b)
        True
    """
    check_reduction(reduction)
    subtract_log_q = check_bool(subtract_log_q, "subtract_log_q")
    rows, shift, hits = _shared_negatives(
        input,
        weight,
        bias,
        target,
        sampler,
        num_samples,
        log_q_for_negatives=subtract_log_q,
        log_q_for_target=False,
        remove_accidental_hits=remove_accidental_hits,
        sparse=sparse,
        negatives=negatives,
        generator=generator,
    )
    loss: Tensor = _SampledSoftmaxCore.apply(  # type: ignore[no-untyped-call]
        input, rows, shift, hits
    )
    return reduce_loss(loss, reduction)


def full_softmax_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    reduction: Reduction = "mean",
    *,
    bias: Tensor | None = None,
) -> Tensor:
    r"""The exact softmax cross-entropy over all ``C`` classes of the output layer.

    .. math::
        \ell_i = -s_i(t_i) + \log \sum_{w=1}^{C} e^{s_i(w)}, \qquad
        s_i = W h_i + b.

    Materialises the ``(B, C)`` logit matrix; the baseline that the sampled losses avoid. In
    production, ``F.cross_entropy(F.linear(input, weight, bias), target)`` computes the same.
    While value checks are on, NaN or infinities anywhere in ``input``, ``weight`` or ``bias``
    raise a ``ValueError`` naming the argument.

    Args:
        input: shape ``(B, dim)``.
        weight: ``(C, dim)``.
        target: ``(B,)`` int64 or int32 in ``[0, C)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        bias: ``(C,)`` or ``None`` (keyword-only).

    Shape:
        - input: :math:`(B, D)`; weight: :math:`(C, D)`; target: :math:`(B,)`.
        - bias: :math:`(C,)` or ``None``.
        - output: a scalar, or :math:`(B,)` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.nce import full_softmax_loss
        >>> gen = torch.Generator().manual_seed(0)
        >>> x, weight = torch.randn(4, 3, generator=gen), torch.randn(10, 3, generator=gen)
        >>> target = torch.tensor([0, 9, 2, 2])
        >>> loss = full_softmax_loss(x, weight, target)
        >>> torch.allclose(loss, F.cross_entropy(x @ weight.T, target))
        True
    """
    target = _check_output_layer(input, weight, bias, target)
    check_reduction(reduction)
    check_finite(weight, "weight")
    if bias is not None:
        check_finite(bias, "bias")
    logits = F.linear(input, weight, bias)  # (B, C)
    true_logits = logits.gather(1, target[:, None]).squeeze(1)
    loss = torch.logsumexp(logits, dim=1) - true_logits
    return reduce_loss(loss, reduction)
