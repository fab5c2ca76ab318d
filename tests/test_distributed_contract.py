"""The distributed contract, checked once for every distributed path of the package.

Each path joins by one line in ``CASES``: how to build its loss module for a process group (or for
one process, ``group=None``), whether the module holds a shard of a class matrix (then it stays
out of the DDP wrapper, as the package documents) or replicated parameters (then it sits inside
the DDP-wrapped model), and the local batch sizes per world size. Every case runs in real gloo
processes (2 and 3 ranks) with a small float64 backbone wrapped in DistributedDataParallel, and
is compared with one process holding the whole batch (and every class):

* every rank returns the single-process loss (the package's convention, ``companion._distributed``);
* every parameter's gradient after DDP's averaging (the backbone's and the replicated ones of the
  loss) equals the single-process gradient, and every shard's gradient its slice of it;
* with value checks off and ``batch_sizes`` given, a forward and backward pass of the loss makes
  zero host syncs (one size exchange without them);
* ``torch.compile(fullgraph=True)`` of the loss equals eager mode, except where torch cannot
  trace the path (SigLIP's point-to-point ring), which must refuse with a clear error;
* a ``batch_sizes`` that disagrees with the real local batches raises an error naming it on every
  rank (with value checks on) instead of a collective that aborts or pads a row into the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import companion
from companion.contrastive import ClipLoss
from companion.linear import LinearCrossEntropyLoss
from companion.partial_fc import PartialFC, shard_range
from companion.siglip import SigLipLoss
from tests.distributed import gradients, run_processes
from tests.host_syncs import count_host_syncs

F64 = torch.float64
BATCH, IN, EMBED, CLASSES, SAMPLED_CLASSES = 12, 5, 4, 23, 40
SIZES = {
    "equal": {2: (6, 6), 3: (4, 4, 4)},
    "unequal": {2: (8, 4), 3: (7, 1, 4)},
}


@dataclass
class Case:
    """One distributed path.

    Attributes:
        make: ``make(group, world, rank)`` -> the loss module (``group=None``: one process).
        pairs: the loss takes ``(image_features, text_features)``; else ``(features, target)``.
        sizes: ``"equal"`` or ``"unequal"`` local batches (see ``SIZES``).
        compiles: ``torch.compile(fullgraph=True)`` must trace it (else it must refuse clearly).
    """

    make: Callable[[Any, int, int], nn.Module]
    pairs: bool
    sizes: str
    compiles: bool = True

    def sharded(self, head: nn.Module) -> bool:
        return hasattr(head, "class_start")


def _partial_fc(classes: int = CLASSES, **options: Any) -> Callable[[Any, int, int], nn.Module]:
    def make(group: Any, world: int, rank: int) -> nn.Module:
        head = PartialFC(EMBED, classes, scale=6.0, group=group, dtype=F64, **options)
        start, stop = shard_range(classes, world, rank)
        head.weight.data = _centres(classes)[start:stop].clone()
        return head

    return make


class VocabularyHead(nn.Module):
    """A language-model head over a vocabulary of ``CLASSES`` tokens, split over the ranks: its
    slice of the output layer (and bias) and :class:`LinearCrossEntropyLoss` (which does not own
    the layer: a model does, often tied to its embedding)."""

    def __init__(self, group: Any, world: int, rank: int, **options: Any) -> None:
        super().__init__()
        self.class_start, stop = shard_range(CLASSES, world, rank)
        self.weight = nn.Parameter(_centres()[self.class_start : stop].clone())
        bias = torch.linspace(-0.5, 0.5, CLASSES, dtype=F64)[self.class_start : stop]
        self.bias = nn.Parameter(bias.clone())
        self.loss = LinearCrossEntropyLoss(group=group, num_classes=CLASSES, **options)

    def forward(self, features: Tensor, target: Tensor, batch_sizes: Any = None) -> Tensor:
        out: Tensor = self.loss(features, self.weight, target, self.bias, batch_sizes=batch_sizes)
        return out


def _vocabulary(**options: Any) -> Callable[[Any, int, int], nn.Module]:
    def make(group: Any, world: int, rank: int) -> nn.Module:
        return VocabularyHead(group, world, rank, **options)

    return make


def _clip(**options: Any) -> Callable[[Any, int, int], nn.Module]:
    def make(group: Any, world: int, rank: int) -> nn.Module:
        return ClipLoss(temperature=0.3, group=group, **options).double()

    return make


def _siglip(**options: Any) -> Callable[[Any, int, int], nn.Module]:
    def make(group: Any, world: int, rank: int) -> nn.Module:
        return SigLipLoss(init_bias=-2.0, group=group, dtype=F64, **options)

    return make


# fmt: off
CASES: dict[str, Case] = {
    "clip, full matrix": Case(_clip(), pairs=True, sizes="equal"),
    "clip, tiles of 3": Case(_clip(chunk_size=3), pairs=True, sizes="unequal"),
    "clip, tiles of 2, per pair": Case(_clip(chunk_size=2, reduction="none"), pairs=True, sizes="unequal"),
    "clip, full matrix, sum": Case(_clip(reduction="sum"), pairs=True, sizes="unequal"),
    "siglip ring, full matrix": Case(_siglip(), pairs=True, sizes="unequal", compiles=False),
    "siglip ring, tiles of 2": Case(_siglip(chunk_size=2), pairs=True, sizes="equal", compiles=False),
    "siglip ring, tiles of 3, per image": Case(_siglip(chunk_size=3, reduction="none"), pairs=True, sizes="unequal", compiles=False),
    "siglip gather, full matrix": Case(_siglip(exchange="gather"), pairs=True, sizes="unequal"),
    "siglip gather, tiles of 2": Case(_siglip(exchange="gather", chunk_size=2), pairs=True, sizes="equal"),
    "partial_fc, full logits, arcface": Case(_partial_fc(), pairs=False, sizes="equal"),
    "partial_fc, chunks of 2, cosface": Case(_partial_fc(chunk_size=2, margin=(1.0, 0.0, 0.35)), pairs=False, sizes="unequal"),
    "partial_fc, chunks of 5, per row": Case(_partial_fc(chunk_size=5, reduction="none"), pairs=False, sizes="unequal"),
    "linear_cross_entropy, token tiles of 5": Case(_vocabulary(chunk_size=5), pairs=False, sizes="unequal"),
    "linear_cross_entropy, every option, vocabulary tiles of 4, per token": Case(_vocabulary(vocab_chunk_size=4, reduction="none", label_smoothing=0.1, z_loss=0.01, softcap=3.0, weight=torch.linspace(0.5, 1.5, CLASSES, dtype=F64)), pairs=False, sizes="unequal"),
    "linear_cross_entropy, smoothing and z-loss, mean": Case(_vocabulary(label_smoothing=0.2, z_loss=0.01), pairs=False, sizes="equal"),
}
# fmt: on


class Model(nn.Module):
    """A small float64 backbone (two towers for pairs) and, for replicated losses, the loss."""

    def __init__(self, head: nn.Module | None, pairs: bool) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every process
        self.image = nn.Sequential(
            nn.Linear(IN, 8, dtype=F64), nn.Tanh(), nn.Linear(8, EMBED, dtype=F64)
        )
        self.text = nn.Linear(IN + 1, EMBED, dtype=F64) if pairs else None
        self.loss = head

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.text is None:
            return self.image(x), y
        return F.normalize(self.image(x), dim=1), F.normalize(self.text(y), dim=1)


def problem() -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, IN, generator=gen, dtype=F64)
    texts = torch.randn(BATCH, IN + 1, generator=gen, dtype=F64)
    labels = torch.randint(CLASSES, (BATCH,), generator=gen)
    return images, texts, labels


def _centres(classes: int = CLASSES) -> Tensor:
    return torch.randn(classes, EMBED, generator=torch.Generator().manual_seed(2), dtype=F64)


def _step(case: Case, head: nn.Module, model: nn.Module, rows: slice, sizes: Any) -> Tensor:
    images, texts, labels = problem()
    a, b = model(images[rows], texts[rows] if case.pairs else labels[rows])
    loss: Tensor = head(a, b, batch_sizes=sizes)
    loss.sum().backward()  # "none": the global vector on every rank
    return loss.detach()


def single_process(case: Case) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    """Loss, every parameter's gradient, and the class matrix's gradient, in one process."""
    head = case.make(None, 1, 0)
    sharded = case.sharded(head)
    model = Model(None if sharded else head, case.pairs)
    loss = _step(case, head, model, slice(None), None)
    weight = head.weight.grad if sharded else None
    return loss, gradients(model), weight


def worker(rank: int, world: int) -> dict[str, Any]:
    group = dist.group.WORLD
    results: dict[str, Any] = {}
    for name, case in CASES.items():
        sizes = SIZES[case.sizes][world]
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        out: dict[str, Any] = {}
        for given in (False, True):
            head = case.make(group, world, rank)
            sharded = case.sharded(head)
            model = Model(None if sharded else head, case.pairs)
            ddp = DistributedDataParallel(model)
            loss = _step(case, head, ddp, rows, sizes if given else None)
            out[given] = (loss, gradients(model), head.weight.grad if sharded else None)
        # the loss alone, value checks off: host syncs, and compiled against eager
        head = case.make(group, world, rank)
        model = Model(None, case.pairs)
        images, texts, labels = problem()
        with torch.no_grad():
            a, b = model(images[rows], texts[rows] if case.pairs else labels[rows])
        a = a.requires_grad_(True)
        if case.pairs:
            b = b.requires_grad_(True)
        syncs = {}
        for given in (False, True):
            with companion.value_checks(False), count_host_syncs() as counted:
                head(a, b, batch_sizes=sizes if given else None).sum().backward()
            syncs[given] = counted()
        out["syncs"] = syncs
        eager = head(a, b, batch_sizes=sizes).sum()

        def step(a: Tensor, b: Tensor, head: nn.Module = head, sizes: Any = sizes) -> Tensor:
            out: Tensor = head(a, b, batch_sizes=sizes).sum()
            return out

        compiled_fn = torch.compile(step, fullgraph=True, backend="aot_eager")
        try:
            with companion.value_checks(False):
                compiled = compiled_fn(a, b)
            out["compiled"] = (eager.detach(), compiled.detach())
        except Exception as error:
            out["compiled"] = f"{type(error).__name__}: {error}"
        torch._dynamo.reset()
        # a batch_sizes list that disagrees with the real batches: every rank raises
        wrong = [sizes[0] + 1, *sizes[1:]] if rank == 0 else list(sizes)
        try:
            head(a, b, batch_sizes=wrong)
            out["wrong sizes"] = "no error"
        except ValueError as error:
            out["wrong sizes"] = str(error)
        results[name] = out
    return results


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    world: int = request.param
    return world, run_processes(worker, world, Path(tmp_path_factory.mktemp(f"world{world}")))


@pytest.mark.parametrize("name", list(CASES))
def test_distributed_path_matches_one_process(name: str, ranks: Any) -> None:
    world, results = ranks
    case = CASES[name]
    loss, grads, weight_grad = single_process(case)
    assert grads, name
    for r, result in enumerate(results):
        msg = f"{name}, {world} processes, rank {r}"
        for given in (False, True):
            got_loss, got_grads, got_weight = result[name][given]
            torch.testing.assert_close(got_loss, loss, rtol=1e-12, atol=1e-12, msg=msg)
            assert set(got_grads) == set(grads), msg
            for param, grad in grads.items():
                torch.testing.assert_close(
                    got_grads[param], grad, rtol=1e-10, atol=1e-12, msg=f"{msg}, {param}"
                )
            if weight_grad is not None:
                start, stop = shard_range(CLASSES, world, r)
                torch.testing.assert_close(
                    got_weight, weight_grad[start:stop], rtol=1e-10, atol=1e-12, msg=msg
                )
        # the one size exchange without batch_sizes; nothing with them
        assert result[name]["syncs"] == {False: 1, True: 0}, msg
        compiled = result[name]["compiled"]
        if case.compiles:
            assert not isinstance(compiled, str), f"{msg}: {compiled}"
            torch.testing.assert_close(compiled[1], compiled[0], rtol=1e-12, atol=1e-12)
        else:
            assert isinstance(compiled, str) and "exchange='gather'" in compiled, msg
        assert "batch_sizes" in result[name]["wrong sizes"], msg


def test_every_distributed_loss_has_a_case() -> None:
    """Every public module or function that takes ``group=`` has a line in ``CASES``."""
    import inspect

    covered = {type(CASES[name].make(None, 1, 0)).__name__ for name in CASES}
    distributed = set()
    for module_name in companion.__all__:
        obj = getattr(companion, module_name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        if callable(target) and "group" in inspect.signature(target).parameters:
            distributed.add(module_name)
    functions = {
        "clip_loss": "ClipLoss",
        "siglip_loss": "SigLipLoss",
        "partial_fc_loss": "PartialFC",
        "linear_cross_entropy": "VocabularyHead",
        "LinearCrossEntropyLoss": "VocabularyHead",
    }
    for name in distributed:
        assert functions.get(name, name) in covered, f"{name} takes group= but has no case"


def sampled_worker(rank: int, world: int) -> dict[str, Any]:
    """A sampled sharded Partial FC step: each rank keeps its own draw of its own classes."""
    sizes = SIZES["unequal"][world]
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    head = _partial_fc(SAMPLED_CLASSES, chunk_size=2, sample_rate=0.5)(
        dist.group.WORLD, world, rank
    )
    model = Model(None, pairs=False)
    ddp = DistributedDataParallel(model)
    images, _, labels = problem()
    features, target = ddp(images[rows], labels[rows])
    gen = torch.Generator().manual_seed(10 + rank)
    loss = head(features, target, batch_sizes=sizes, generator=gen)
    loss.backward()
    assert head.last_sampled is not None
    kept = head.last_sampled + head.class_start
    return {
        "loss": loss.detach(),
        "grads": gradients(model),
        "weight": head.weight.grad,
        "kept": kept,
    }


@pytest.mark.parametrize("world", [2, 3])
def test_sampled_shards_match_one_process_over_the_kept_classes(world: int, tmp_path: Path) -> None:
    """The reference is one process's full softmax over the union of the classes the ranks kept."""
    ranks = run_processes(sampled_worker, world, tmp_path)
    kept = torch.cat([ranks[r]["kept"] for r in range(world)])
    _, _, labels = problem()
    assert torch.isin(labels, kept).all()  # every positive of the global batch
    assert kept.numel() == world * BATCH < SAMPLED_CLASSES  # 12 of each shard's 13 to 20
    head = PartialFC(EMBED, kept.numel(), scale=6.0, dtype=F64)
    head.weight.data = _centres(SAMPLED_CLASSES)[kept].clone()
    model = Model(None, pairs=False)
    images, _, _ = problem()
    features, _ = model(images, labels)
    loss = head(features, torch.searchsorted(kept, labels))
    loss.backward()
    want = torch.zeros(SAMPLED_CLASSES, EMBED, dtype=F64)
    want[kept] = head.weight.grad
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
        for param, grad in gradients(model).items():
            torch.testing.assert_close(got["grads"][param], grad, rtol=1e-10, atol=1e-12)
        start, stop = shard_range(SAMPLED_CLASSES, world, r)
        torch.testing.assert_close(got["weight"], want[start:stop], rtol=1e-10, atol=1e-12)
