"""companion.siglip.siglip_loss around a ring of 2 and 3 real processes (gloo on the CPU).

The processes each hold part of a batch of 9 pairs and train the same small model wrapped in
DistributedDataParallel. The average of the losses they return must equal the loss of one
process holding all 9 pairs, and every parameter's gradient after DDP's averaging (the
encoders', the learnable log-scale's and the bias's) must equal the single-process gradient:
full matrix and tiles, equal and unequal local batches, the sizes exchanged or given. With
value checks off and the sizes given, a forward and backward pass makes no host sync.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import companion
from companion.siglip import SigLipLoss, siglip_loss
from tests.distributed import assert_ranks_match, gradients, run_processes
from tests.host_syncs import count_host_syncs

BATCH = 9
# world size -> name -> (local batch sizes, chunk_size, pass the sizes as batch_sizes)
CASES: dict[int, dict[str, tuple[tuple[int, ...], int | None, bool]]] = {
    2: {
        "5 + 4, full matrix": ((5, 4), None, False),
        "5 + 4, tiles of 2": ((5, 4), 2, False),
        "8 + 1, tiles of 3, sizes given": ((8, 1), 3, True),
    },
    3: {
        "3 + 3 + 3, full matrix, sizes given": ((3, 3, 3), None, True),
        "3 + 3 + 3, tiles of 2": ((3, 3, 3), 2, False),
        "2 + 6 + 1, tiles of 4": ((2, 6, 1), 4, False),
    },
}


class PairEncoder(nn.Module):
    """Two linear encoders, unit-normalised outputs, and a SigLIP loss with scale and bias."""

    def __init__(self, chunk_size: int | None) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every process
        self.image = nn.Linear(6, 4, dtype=torch.float64)
        self.text = nn.Linear(5, 4, dtype=torch.float64)
        # a moderate bias so that positives and negatives both matter at this batch size
        self.loss = SigLipLoss(init_bias=-2.0, chunk_size=chunk_size, dtype=torch.float64)

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
    results: dict[str, object] = {}
    for name, (sizes, chunk, given) in CASES[world].items():
        model = PairEncoder(chunk)
        ddp = DistributedDataParallel(model)
        start = sum(sizes[:rank])
        stop = start + sizes[rank]
        loss = ddp(images[start:stop], texts[start:stop], sizes if given else None)
        loss.backward()
        results[name] = (loss.detach(), gradients(model))
    # host syncs of the loss alone, 3 pairs per rank
    image = F.normalize(images[3 * rank : 3 * rank + 3, :5], dim=1).requires_grad_()
    text = F.normalize(texts[3 * rank : 3 * rank + 3], dim=1).requires_grad_()
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    syncs = {}
    for chunk in (None, 2):
        for given in (False, True):
            with companion.value_checks(False), count_host_syncs() as counted:
                sizes_arg = (3,) * world if given else None
                siglip_loss(image, text, scale, bias, chunk, batch_sizes=sizes_arg).backward()
            syncs[chunk, given] = counted()
    results["syncs"] = syncs
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_ring_of_processes_matches_one(world: int, tmp_path: Path) -> None:
    ranks = run_processes(worker, world, tmp_path)
    for r in range(world):
        # the one size exchange without batch_sizes; nothing with them
        assert ranks[r]["syncs"] == {(None, False): 1, (None, True): 0, (2, False): 1, (2, True): 0}
    images, texts = paired_batch()
    for name, (_, chunk, _) in CASES[world].items():
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
            "loss.bias",
        }
        assert_ranks_match(ranks, name, loss, want)
