"""The tiled SigLIP loss against the plain full-matrix one: time and peak memory, fwd + bwd.

What is measured, per batch size B (512 features, float32, unit-norm random features, a logit
scale of 10 and a bias of -10, both tensors that need a gradient):

* ``full``: the implementation open_clip's ``SigLipLoss`` uses on one process:
  ``logits = t * I @ T.T + b``, labels ``2 * eye - 1``, ``-logsigmoid(labels * logits).sum() / B``.
  Autograd keeps several ``B x B`` buffers.
* ``chunked``: ``companion.siglip.siglip_loss(I, T, t, b, chunk_size=1024)``, which never holds
  more than two ``1024 x B`` tiles of the matrix and computes value and gradients in one sweep.
* ``matmul floor``: the three ``B x B x D`` products that any exact method performs (the
  forward ``I T^T`` and the backward ``G T`` and ``G^T I``), tiled like ``chunked``, with no
  elementwise work at all: the time no implementation can beat on this machine.

How each row is measured: see ``benchmarks/_pairs.py`` (shared with ``benchmarks/clip.py``).

Usage::

    python benchmarks/siglip.py            # the full run; writes benchmarks/results/siglip.md
    python benchmarks/siglip.py --quick    # small batch sizes; prints (or --output FILE)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from _pairs import PairLoss, main

from companion.siglip import siglip_loss


def full_siglip(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """The plain full-matrix SigLIP loss (open_clip's formula on one process)."""
    logits = scale * image @ text.T + bias
    labels = 2 * torch.eye(image.shape[0], dtype=image.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / image.shape[0]


def chunked_siglip(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, chunk: int
) -> torch.Tensor:
    return siglip_loss(image, text, scale, bias, chunk_size=chunk)


SIGLIP = PairLoss(
    title="SigLIP loss",
    script=__file__,
    results=Path(__file__).resolve().parent / "results" / "siglip.md",
    scalars=(10.0, -10.0),
    full=full_siglip,
    chunked=chunked_siglip,
)

if __name__ == "__main__":
    main(SIGLIP, __doc__.split("\n")[0])
