"""The tiled CLIP loss against the plain full-matrix one: time and peak memory, forward + backward.

What is measured, per batch size B (512 features, float32, unit-norm random features, logit
scale 1/0.07 as a tensor that needs a gradient):

* ``full``: the implementation most code bases use (the CLIP paper's pseudocode, Hugging Face's
  CLIPModel): ``logits = s * I @ T.T``, then the mean of ``cross_entropy(logits, arange)`` and
  ``cross_entropy(logits.T, arange)``. Autograd keeps several ``B x B`` buffers.
* ``chunked``: ``companion.contrastive.clip_loss(I, T, s, chunk_size=1024)``, which never holds
  more than two ``1024 x B`` tiles of the matrix.
* ``matmul floor``: the three ``B x B x D`` products that any exact method performs (the
  forward ``I T^T`` and the backward ``G T`` and ``G^T I``), tiled like ``chunked``, with no
  softmax work at all: the time no implementation can beat on this machine.

The tiled loss needs a fourth product (the backward pass rebuilds each tile, since a row's
gradient needs every column's log-sum-exp), except the forward pass's last tile, which stays in
the buffer: with n tiles its own lower bound is (3 + (n - 1)/n) / 3 of this floor. How
each row is measured: see ``benchmarks/_pairs.py``.

Usage::

    python benchmarks/clip.py            # the full run; writes benchmarks/results/clip.md
    python benchmarks/clip.py --quick    # small batch sizes; prints (or --output FILE)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from _pairs import PairLoss, main

from companion.contrastive import clip_loss


def full_clip(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The plain full-matrix CLIP loss."""
    logits = scale * image @ text.T
    labels = torch.arange(image.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def chunked_clip(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, chunk: int
) -> torch.Tensor:
    return clip_loss(image, text, scale, chunk_size=chunk)


CLIP = PairLoss(
    title="CLIP loss",
    script=__file__,
    results=Path(__file__).resolve().parent / "results" / "clip.md",
    scalars=(1 / 0.07,),
    full=full_clip,
    chunked=chunked_clip,
    floor_note=(
        "; the tiles do a fourth product where the floor has three, except for the last tile "
        "of the forward pass, which the backward pass reuses: with n = 16 tiles of 1,024 rows, "
        "(3 + 15/16) / 3 = 1.31 times the floor's products (a count, not a bound on time: the "
        "tiles write into reused buffers where the floor allocates)"
    ),
    floor_target=1.40,
)

if __name__ == "__main__":
    main(CLIP, __doc__.split("\n")[0])
