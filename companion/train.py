"""A small, explicit full-batch or mini-batch training loop for the chapters' experiments.

Chapters train tiny models on small data sets (digits, iris, generated data) on the CPU; this
loop keeps their code short and their randomness seeded, and records the training curve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from companion._validate import check_batch_size, check_int, check_positive, check_tensor

__all__ = ["History", "accuracy", "fit"]


@dataclass
class History:
    """Per-epoch mean training loss (and test accuracy when a test set was given).

    Examples:
        >>> from companion.train import History
        >>> history = History(loss=[0.9, 0.4])
        >>> history.loss[-1], history.test_accuracy
        (0.4, [])
    """

    loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)


def accuracy(logits: Tensor, target: Tensor) -> float:
    """Fraction of rows whose arg-max equals ``target`` (class indices).

    Shape:
        - logits: ``(B, C)``; target: ``(B,)``.
        - output: a Python float.

    Examples:
        >>> import torch
        >>> from companion.train import accuracy
        >>> logits = torch.tensor([[2.0, 0.1], [0.3, 0.9], [1.0, 0.0]])
        >>> accuracy(logits, torch.tensor([0, 1, 1]))
        0.6666666666666666
    """
    check_tensor(logits, "logits", ndim=2)
    check_batch_size(logits, "logits", target, "target")
    return float((logits.argmax(dim=1) == target).double().mean())


def fit(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float = 1e-2,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
    parameters: list[nn.Parameter] | None = None,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
) -> History:
    """Train ``model`` with Adam on ``loss_fn(model(x_batch), y_batch)``.

    Args:
        model: maps a batch of ``x`` to whatever ``loss_fn`` takes first.
        loss_fn: ``(output, target) -> scalar loss``.
        x, y: training inputs and targets (same first dimension).
        epochs: passes over the data.
        lr, weight_decay: Adam's settings.
        batch_size: mini-batch size; ``None`` trains full-batch.
        seed: seeds the shuffling of mini-batches.
        parameters: parameters to optimise (default: ``model.parameters()``); pass them when
            the loss owns parameters too.
        x_test, y_test: if given, the test accuracy of ``model(x_test)`` is recorded after each
            epoch (``model`` must then output logits).

    Shape:
        - x: ``(N, *)``; y: ``(N, *)``; x_test, y_test: ``(N_test, *)``.
        - output: a :class:`History` with one entry per epoch.

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from companion.train import fit
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]]), torch.tensor([0, 0, 1, 1])
        >>> model = torch.nn.Linear(1, 2)
        >>> history = fit(model, F.cross_entropy, x, y, epochs=50, lr=0.1, x_test=x, y_test=y)
        >>> len(history.loss), history.loss[-1] < history.loss[0], history.test_accuracy[-1]
        (50, True, 1.0)
    """
    check_int(epochs, "epochs", minimum=1)
    check_positive(lr, "lr")
    check_batch_size(x, "x", y, "y")
    n = x.shape[0]
    bs = n if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
    params = list(model.parameters()) if parameters is None else parameters
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = History()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        total = 0.0
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.loss.append(total / n)
        if x_test is not None and y_test is not None:
            model.eval()
            with torch.no_grad():
                history.test_accuracy.append(accuracy(model(x_test), y_test))
    model.eval()
    return history
