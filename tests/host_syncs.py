"""Count host syncs: every point where torch must read a tensor's values on the host.

``.item()``, ``float(t)``, ``bool(t)`` and ``int(t)`` end in the aten op
``_local_scalar_dense``; ``nonzero``, ``masked_select`` and ``unique`` (and boolean-mask
indexing, which calls ``nonzero``) have an output shape that depends on the data, so on an
accelerator the host waits for the device to learn it. ``.tolist()`` and ``.numpy()`` read the
data without dispatching an op, so they are counted by wrapping them. :func:`count_host_syncs`
counts all of these inside a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_SYNC_PACKETS = {
    aten._local_scalar_dense,
    aten.nonzero,
    aten.masked_select,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
}


# indexing with a boolean mask (x[mask], x[mask] = v) needs the mask's nonzero count
_MASK_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


def _has_mask(args: Any) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
        for i in (indices or ())
    )


class _SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        packet = func.overloadpacket
        if packet in _SYNC_PACKETS or (packet in _MASK_INDEXING and _has_mask(args)):
            self.count += 1
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@contextmanager
def count_host_syncs() -> Iterator[Callable[[], int]]:
    """``with count_host_syncs() as syncs: ...``, then ``syncs()`` is the number counted."""
    mode = _SyncCounter()
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def wrap(name: str) -> Callable[..., Any]:
        def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            mode.count += 1
            mode.ops.append(f"Tensor.{name}")
            return originals[name](self, *args, **kwargs)

        return counted

    for name in originals:
        setattr(torch.Tensor, name, wrap(name))
    try:
        with mode:
            yield lambda: mode.count
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
