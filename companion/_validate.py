"""Input checks shared by every public function of the companion package.

This is the one place where inputs are validated. Each public loss calls these helpers at its
boundary, so a bad call fails early with a message that names the argument, the shape (or
dtype, or value) it got and what it wanted, instead of returning a silent wrong answer or NaN.

Conventions:

* A wrong *type* (not a tensor, an integer tensor where a float one is needed) raises
  ``TypeError``; a wrong *value* (shape, range, NaN, empty batch) raises ``ValueError``.
* Messages start with the argument's name: ``"target must have shape (8,), got (7,)"``.
* Checks never copy or modify their input; those that return something return it unchanged,
  so they can be used inline.

Two kinds of check:

* *Metadata* checks (type, ndim, shape, dtype, device, integer targets, hyper-parameters, the
  reduction string) read only what the tensor's header says. They cost nothing and are always
  on.
* *Value* checks (NaN or infinite entries, class indices in range, probabilities that sum to
  1) must read the tensor's data, which on an accelerator means waiting for the device (a host
  sync) and which ``torch.compile`` cannot trace. They run only while
  :func:`value_checks_enabled` is true: by default yes, so a learner gets a clear error; a
  training loop turns them off with :func:`set_value_checks` or the :class:`value_checks`
  context manager, and they are skipped automatically while ``torch.compile`` traces, and for
  tensors that hold no values (on the ``meta`` device, or fake tensors under
  ``FakeTensorMode``, which shape-propagation and memory-estimation tools use).
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, cast

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from companion._numerics import compute_dtype

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


class _ValueCheckState(threading.local):
    enabled: bool = True


_VALUE_CHECKS = _ValueCheckState()


def _fake_mode_active() -> bool:
    """Whether a ``FakeTensorMode`` is active (tensors created now hold no values)."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def _holds_no_values(x: Tensor) -> bool:
    """A tensor whose values cannot be read: on the meta device, or a fake tensor."""
    return x.is_meta or is_fake(x)


def value_checks_enabled(*tensors: Tensor) -> bool:
    """Whether checks that read tensor values run now (on ``tensors``, if given).

    True unless they were turned off with :func:`set_value_checks` / :class:`value_checks`
    (the setting is per thread); always False while ``torch.compile`` traces (a traced graph
    cannot branch on data) and while a ``FakeTensorMode`` is active; and False when one of
    ``tensors`` holds no values (a ``meta`` tensor or a fake tensor), which shape-only tools
    pass through a loss.

    Examples:
        >>> import torch, companion
        >>> companion.value_checks_enabled(), companion.value_checks_enabled(torch.ones(2))
        (True, True)
        >>> companion.value_checks_enabled(torch.ones(2, device="meta"))
        False
    """
    if not _VALUE_CHECKS.enabled or torch.compiler.is_compiling() or _fake_mode_active():
        return False
    return not any(_holds_no_values(t) for t in tensors)


def set_value_checks(enabled: bool) -> None:
    """Turn the checks that read tensor values (NaN, infinities, target ranges) on or off.

    In the spirit of :func:`torch.autograd.set_detect_anomaly`: on by default, so a wrong input
    gets a clear error naming the argument; off in a hot training loop, where each such check
    would wait for the device (a host sync). Metadata checks (shapes, dtypes, devices,
    hyper-parameters) stay on either way. The setting is per thread.

    Examples:
        >>> import torch, companion
        >>> companion.set_value_checks(False)
        >>> companion.value_checks_enabled()
        False
        >>> companion.set_value_checks(True)
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _VALUE_CHECKS.enabled = enabled


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager: value checks on or off inside the block, restored after it.

    Examples:
        >>> import torch, companion
        >>> with companion.value_checks(False):
        ...     companion.value_checks_enabled()
        False
        >>> companion.value_checks_enabled()
        True
    """
    previous = _VALUE_CHECKS.enabled
    set_value_checks(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS.enabled = previous


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    floating: bool = True,
    allow_empty: bool = False,
    allow_nan: bool = False,
    allow_inf: bool = False,
) -> Tensor:
    """Check that ``x`` is a tensor of the expected kind and return it.

    The policy for non-finite entries, one for the whole package: a loss refuses NaN and
    +-inf in its inputs (a clear error while value checks are on); the few functions whose
    value at an infinity is an exact limit (the sigmoid family, softmax, log-softmax and
    log-sum-exp, which treat ``-inf`` as a masked entry) accept infinities with
    ``allow_inf=True`` and return that limit.

    Args:
        x: the value to check.
        name: the argument's name, used in the error message.
        ndim: required number of dimensions (an int, or a sequence of allowed ints).
        floating: require a floating-point dtype (float16, bfloat16, float32, float64).
        allow_empty: accept a tensor with zero elements.
        allow_nan: skip the value check entirely (the caller checks the values it uses).
        allow_inf: accept +-inf entries (NaN is still refused).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float64, bfloat16 or float16), "
            f"got dtype {x.dtype}; convert it with .float()"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(
                f"{name} must have {want} dimension(s), got {x.dim()} with shape {_shape(x)}"
            )
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {_shape(x)}")
    if not allow_nan and x.is_floating_point() and value_checks_enabled(x):
        if allow_inf:
            if bool(torch.isnan(x).any()):
                raise ValueError(f"{name} contains NaN")
        elif not bool(torch.isfinite(x).all()):
            if bool(torch.isnan(x).any()):
                raise ValueError(f"{name} contains NaN")
            raise ValueError(
                f"{name} must be finite, got an infinite entry (this loss has no limit to "
                "return there)"
            )
    return x


def check_finite(x: Tensor, name: str) -> Tensor:
    """Reject NaN and +-inf in ``x`` (a value check: skipped when value checks are off)."""
    if x.is_floating_point() and value_checks_enabled(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, got NaN or infinite entries")
    return x


def check_shape(x: Tensor, name: str, shape: Sequence[int]) -> Tensor:
    """Require ``x.shape == shape`` exactly."""
    want = tuple(int(s) for s in shape)
    if _shape(x) != want:
        raise ValueError(f"{name} must have shape {want}, got {_shape(x)}")
    return x


def check_same_shape(a: Tensor, name_a: str, b: Tensor, name_b: str) -> None:
    """Require two tensors to have identical shapes."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the same shape as {name_a} {_shape(a)}, got {_shape(b)}"
        )


def check_batch_size(a: Tensor, name_a: str, b: Tensor, name_b: str) -> None:
    """Require the first dimensions (the batch) of two tensors to agree."""
    if a.dim() == 0 or b.dim() == 0 or a.shape[0] != b.shape[0]:
        got_a = a.shape[0] if a.dim() else "a scalar"
        got_b = b.shape[0] if b.dim() else "a scalar"
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size (first dimension), "
            f"got {got_a} for {name_a} {_shape(a)} and {got_b} for {name_b} {_shape(b)}"
        )


def check_same_dtype_device(a: Tensor, name_a: str, b: Tensor, name_b: str) -> None:
    """Require two floating tensors to share dtype and device (no silent promotion)."""
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b} must have the same dtype as {name_a} ({a.dtype}), got {b.dtype}")
    if a.device != b.device:
        raise ValueError(
            f"{name_b} must be on the same device as {name_a} ({a.device}), got {b.device}"
        )


#: Integer dtypes accepted as class indices. uint8 and bool are refused: torch reads them as
#: masks when they index a tensor, so ``x[target]`` would select rows instead of classes.
CLASS_INDEX_DTYPES = (torch.int64, torch.int32)


def check_class_index(
    target: object, name: str, num_classes: int, *, batch_shape: Sequence[int] | None = None
) -> Tensor:
    """Check integer class indices in ``[0, num_classes)`` and return them as ``torch.long``.

    The dtype must be int64 or int32 (int32 is converted, since torch's losses and indexing
    want int64); the range is a value check (see :func:`value_checks_enabled`).

    Args:
        target: the class indices.
        name: the argument's name.
        num_classes: the number of classes C.
        batch_shape: required shape of ``target`` (for example ``(B,)``).
    """
    if not isinstance(target, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of class indices, got {type(target).__name__}"
        )
    if target.dtype not in CLASS_INDEX_DTYPES:
        hint = (
            "; uint8 and bool tensors index as masks, convert with .long() if they hold indices"
            if target.dtype in (torch.uint8, torch.bool)
            else ""
        )
        raise TypeError(
            f"{name} must hold integer class indices (torch.int64 or torch.int32), "
            f"got dtype {target.dtype}{hint}"
        )
    if batch_shape is not None:
        check_shape(target, name, batch_shape)
    if target.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {_shape(target)}")
    if value_checks_enabled(target):
        lo, hi = (int(v) for v in torch.aminmax(target))
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name} must hold class indices in [0, {num_classes - 1}] for {num_classes} "
                f"classes, got {bad}"
            )
    return target.long()


def class_index_guard(
    target: Tensor, name: str, num_classes: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Zeros shaped like ``target``, read through ``target`` from a length-``num_classes`` table.

    An out-of-range index then fails inside the indexing kernel itself (in eager mode, in code
    compiled by ``torch.compile``, and as a device-side assert on an accelerator), with no host
    sync: losses that clamp their targets (sharded, sampled, ignored rows) add this to their
    per-row loss so that a bad class index still raises while value checks are off. Eager mode
    re-raises the kernel's error as a ``ValueError`` naming the argument.
    """
    table = torch.zeros(num_classes, dtype=dtype, device=target.device)
    if torch.compiler.is_compiling():
        return table.index_select(0, target.reshape(-1)).reshape(target.shape)
    try:
        return table.index_select(0, target.reshape(-1)).reshape(target.shape)
    except (IndexError, RuntimeError) as error:
        raise ValueError(
            f"{name} must hold class indices in [0, {num_classes - 1}] for {num_classes} "
            f"classes; the indexing kernel found one outside ({error})"
        ) from error


def check_in_range(
    x: Tensor, name: str, low: float, high: float, *, what: str = "values"
) -> Tensor:
    """Require every entry of ``x`` to lie in ``[low, high]`` (a value check).

    The message quotes the first offending entry with all its digits (``1.0000001192092896``,
    not a rounded ``1``), so the reader sees why it was refused.
    """
    if x.numel() and value_checks_enabled(x):
        bad = (x < low) | (x > high) | torch.isnan(x)
        if bool(bad.any()):
            first = float(x[bad].flatten()[0])
            raise ValueError(f"{name} must hold {what} in [{low}, {high}], got {first!r}")
    return x


def check_binary(x: Tensor, name: str, *, hint: str = "") -> Tensor:
    """Require every entry of ``x`` to be exactly 0 or 1 (a value check; bool always passes).

    The message quotes the first other value; ``hint`` is appended to it.
    """
    if x.dtype == torch.bool or not value_checks_enabled(x):
        return x
    if x.is_complex():
        raise TypeError(f"{name} must hold the labels 0 and 1, got dtype {x.dtype}")
    bad = (x != 0) & (x != 1)
    if bool(bad.any()):
        first = x[bad].flatten()[0]
        value = float(first) if x.is_floating_point() else int(first)
        raise ValueError(f"{name} must hold the labels 0 and 1, got {value!r}{hint}")
    return x


def check_integer_labels(labels: object, name: str, batch: int, like: Tensor) -> Tensor:
    """A ``(batch,)`` tensor of integer labels of any value (not class indices into a fixed
    range: SupCon's labels, retrieval groups), on ``like``'s device."""
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of integer labels, got {type(labels).__name__}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    check_shape(labels, name, (batch,))
    if labels.device != like.device:
        raise ValueError(f"{name} must be on {like.device}, got {labels.device}")
    return labels


def scalar_argument(value: object, name: str, like: Tensor, *, positive: bool) -> Tensor:
    """A scalar hyper-parameter given as a Python number or a one-element tensor, as a 0-d tensor.

    A tensor keeps its autograd graph (a learned scale or bias receives its gradient); reading
    its value (positivity, finiteness) is a value check. A Python number becomes a 0-d tensor
    of ``like``'s dtype and device. A bare :class:`torch.nn.Parameter` is refused for a
    positive scale: a learned temperature is usually stored as its log (open_clip's
    ``model.logit_scale``), which would silently be used as the scale itself.
    """
    if isinstance(value, Tensor):
        if positive and isinstance(value, torch.nn.Parameter):
            raise TypeError(
                f"{name} is an nn.Parameter; {name} is the scale s itself, while a learned "
                f"temperature is usually stored as its log (open_clip's model.logit_scale): pass "
                f"{name}=param.exp() (or use the loss's module, which owns the log-parameter)"
            )
        check_tensor(value, name)
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be a scalar (a 0-d or one-element tensor), got shape {_shape(value)}"
            )
        if value.device != like.device and value.dim() > 0:
            raise ValueError(f"{name} must be on {like.device}, got {value.device}")
        if positive and value_checks_enabled(value):
            check_positive(value.detach(), name)
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float or a scalar tensor, got {type(value).__name__}")
    number = check_positive(value, name) if positive else check_real(value, name)
    return torch.tensor(number, dtype=like.dtype, device=like.device)


def check_probabilities(p: Tensor, name: str, *, dim: int = -1, atol: float = 1e-4) -> Tensor:
    """Require ``p`` to hold probability vectors along ``dim``: entries in [0, 1], sum 1."""
    check_in_range(p, name, 0.0, 1.0, what="probabilities")
    if not value_checks_enabled(p):
        return p
    sums = p.sum(dim=dim, dtype=torch.float64)
    worst = float((sums - 1.0).abs().max()) if sums.numel() else 0.0
    if worst > atol:
        raise ValueError(
            f"{name} must hold probability vectors that sum to 1 along dim {dim}, "
            f"got a sum that is off by {worst:.3g}"
        )
    return p


def check_real(value: object, name: str, *, what: str = "finite number") -> float:
    """Require a finite real Python number (int or float, not bool or str); return it as float.

    A one-element tensor is accepted too, but reading it is a host sync: pass Python numbers
    in a training loop.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(
                f"{name} must be a real number, got a tensor of shape "
                f"{_shape(value)} and dtype {value.dtype}"
            )
        v = float(value)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (int or float), got {type(value).__name__}")
    else:
        v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a {what}, got {v}")
    return v


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Require a finite positive (or non-negative) real number; return it as float."""
    want = "finite non-negative number" if allow_zero else "finite positive number"
    v = check_real(value, name, what=want)
    if not (v >= 0 if allow_zero else v > 0):
        raise ValueError(f"{name} must be a {want}, got {v}")
    return v


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """Require a Python integer (not bool), optionally at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_bool(value: object, name: str) -> bool:
    """A Python bool (not an int, not a tensor): a flag that changes what a loss computes."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_chunk_size(value: object, name: str = "chunk_size") -> int | None:
    """``None`` (no tiling) or a positive int: the rows or columns of one tile."""
    if value is None:
        return None
    return check_int(value, name, minimum=1)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Require a string option to be one of ``choices`` (a distance, a reduction, a kind)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_reduction(reduction: object) -> Reduction:
    """Require one of ``"none"``, ``"mean"``, ``"sum"``."""
    return cast(Reduction, check_choice(reduction, "reduction", REDUCTIONS))


def reduce_loss(loss: Tensor, reduction: str, weight: Tensor | None = None) -> Tensor:
    """Apply ``reduction`` to an unreduced loss: the one reduction rule of the package.

    As in torch.nn.functional: ``"none"`` returns the per-element loss, ``"sum"`` its sum,
    ``"mean"`` its mean. With ``weight`` (broadcastable to ``loss``, non-negative) the loss is
    multiplied by it first and ``"mean"`` is the weighted average ``sum(w * l) / sum(w)``,
    which is how ``F.cross_entropy`` and ``F.nll_loss`` average class-weighted losses.

    Weights that are all zero: the weighted mean is then 0 (no weight, no loss, and a zero
    gradient), as in TensorFlow, where torch would return NaN (0 / 0). Computed without a host
    sync.

    float16 and bfloat16 losses are summed and divided in float32
    (:func:`~companion._numerics.compute_dtype`) and the result cast back: the mean of 10,000
    float16 losses of 10 is 10, not ``inf`` (their sum, 100,000, is past float16's 65,504).
    A ``"sum"`` past that limit is ``inf`` in float16, as the value itself is.
    """
    check_reduction(reduction)
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    work = compute_dtype(loss.dtype)
    total = loss.sum(dtype=work)
    if reduction == "sum":
        return total.to(loss.dtype)
    if weight is None:
        return loss.mean(dtype=work).to(loss.dtype)
    weight_sum = torch.broadcast_to(weight, loss.shape).sum(dtype=work)
    return weighted_mean(total, weight_sum).to(loss.dtype)


def weighted_mean(total: Tensor, weight_sum: Tensor) -> Tensor:
    """``total / weight_sum``, and 0 where ``weight_sum`` is 0 (no weight, no loss), with no
    host sync: the rule :func:`reduce_loss` applies to every weighted mean of the package."""
    return total / torch.where(weight_sum > 0, weight_sum, torch.ones_like(weight_sum))


def check_positive_entries(x: Tensor, name: str, *, what: str = "positive values") -> Tensor:
    """Require every entry of ``x`` to be strictly positive (a value check; NaN fails too).

    For quantities whose logarithm is taken (class priors): :func:`check_in_range` accepts its
    lower end, and a zero prior would become a logit of ``-inf``.
    """
    if x.numel() and value_checks_enabled(x):
        bad = ~(x > 0)
        if bool(bad.any()):
            first = float(x[bad].flatten()[0])
            raise ValueError(f"{name} must hold {what} (> 0), got {first!r}")
    return x
