"""companion.contrastive.clip_loss across two real processes (gloo on the CPU).

Two processes, each with part of a batch of 8 pairs, train the same small model wrapped in
DistributedDataParallel. The average of the losses they return must equal the loss of one
process holding all 8 pairs, and every parameter's gradient after DDP's averaging (the
encoders' and the learnable temperature's) must equal the single-process gradient: with the
full matrix and the tiled one, with equal and unequal local batch sizes, with the sizes exchanged
or given by the caller (``batch_sizes``). With value checks off and the sizes given, a forward
and backward pass makes no host sync; without them, the one size exchange is the only one.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import companion
from companion.contrastive import ClipLoss, clip_loss
from tests.distributed import assert_ranks_match, gradients, run_processes
from tests.host_syncs import count_host_syncs

BATCH = 8
# name -> (local batch size of rank 0 and rank 1, chunk_size, pass the sizes as batch_sizes)
CASES: dict[str, tuple[tuple[int, int], int | None, bool]] = {
    "equal halves, full matrix": ((4, 4), None, False),
    "equal halves, tiles of 3": ((4, 4), 3, False),
    "5 + 3, tiles of 2": ((5, 3), 2, False),
    "6 + 2, full matrix": ((6, 2), None, False),
    "equal halves, sizes given": ((4, 4), 3, True),
    "5 + 3, sizes given": ((5, 3), None, True),
}


class PairEncoder(nn.Module):
    """Two linear encoders, unit-normalised outputs, and a CLIP loss with its temperature."""

    def __init__(self, chunk_size: int | None) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every process
        self.image = nn.Linear(6, 4, dtype=torch.float64)
        self.text = nn.Linear(5, 4, dtype=torch.float64)
        self.loss = ClipLoss(temperature=0.2, chunk_size=chunk_size).double()

    def forward(
        self, images: Tensor, texts: Tensor, batch_sizes: tuple[int, ...] | None = None
    ) -> Tensor:
        image_features = F.normalize(self.image(images), dim=1)
        text_features = F.normalize(self.text(texts), dim=1)
        return self.loss(image_features, text_features, batch_sizes=batch_sizes)


def paired_batch() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 6, generator=gen, dtype=torch.float64)
    texts = torch.randn(BATCH, 5, generator=gen, dtype=torch.float64)
    return images, texts


def worker(rank: int, world: int) -> dict[str, object]:
    images, texts = paired_batch()
    results = {}
    for name, (sizes, chunk, given) in CASES.items():
        model = PairEncoder(chunk)
        ddp = DistributedDataParallel(model)
        start = sum(sizes[:rank])
        stop = start + sizes[rank]
        loss = ddp(images[start:stop], texts[start:stop], sizes if given else None)
        loss.backward()
        results[name] = (loss.detach(), gradients(model))
    # host syncs of the loss alone (DDP's own bookkeeping is not the loss's)
    syncs = {}
    image = F.normalize(images[rank * 4 : rank * 4 + 4, :5], dim=1).requires_grad_()
    text = F.normalize(texts[rank * 4 : rank * 4 + 4], dim=1).requires_grad_()
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    for chunk in (None, 3):
        for given in (False, True):
            with companion.value_checks(False), count_host_syncs() as counted:
                loss = clip_loss(image, text, scale, chunk, batch_sizes=(4, 4) if given else None)
                loss.backward()
            syncs[chunk, given] = counted()
    results["syncs"] = syncs
    return results


def test_two_processes_match_one(tmp_path: Path) -> None:
    world = 2
    ranks = run_processes(worker, world, tmp_path)
    images, texts = paired_batch()
    for r in range(world):
        # the one size exchange without batch_sizes; nothing with them
        assert ranks[r]["syncs"] == {
            (None, False): 1,
            (None, True): 0,
            (3, False): 1,
            (3, True): 0,
        }
    for name, (_, chunk, _) in CASES.items():
        single = PairEncoder(chunk)
        loss = single(images, texts)
        loss.backward()
        want = gradients(single)
        assert set(want) == {
            "image.weight",
            "image.bias",
            "text.weight",
            "text.bias",
            "loss.log_scale",
        }
        assert_ranks_match(ranks, name, loss, want)
