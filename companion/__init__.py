"""companion: the loss functions of the book *Losses, Derived*, derived, tested and benchmarked.

One module per topic, each with a functional core in the style of ``torch.nn.functional``
(``something_loss(input, target, ..., reduction="mean")``) and, where a loss owns parameters,
a ``torch.nn.Module`` that calls the function. Import the module you need::

    from companion.sigmoid import log_sigmoid, softplus

Shared helpers: :mod:`companion.data` (seeding and data generators), :mod:`companion.plot`
(the book's figure style) and :mod:`companion.train` (a small training loop).
"""

from companion._validate import set_value_checks, value_checks, value_checks_enabled

__version__ = "0.1.0"

__all__ = ["set_value_checks", "value_checks", "value_checks_enabled"]
