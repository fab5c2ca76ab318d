"""The loss contract, checked once for every public loss of the package.

Each loss joins by one line in ``CASES``: a name, the callable, and an input factory that
returns the positional arguments for a dtype. The first argument listed in ``floats`` is the
*main* input (the one the bad-input rows corrupt); every argument listed there is differentiable.
The checks, for every case:

* ``reduction="none"`` has the documented shape, and ``sum`` == ``mean`` x count;
* ``torch.autograd.gradcheck`` in float64;
* finite values and gradients in bfloat16 and float16 at ordinary inputs;
* the inputs are not modified;
* the bad-input table: a wrong dtype, a wrong ndim, an empty batch, NaN and infinity in the main
  input, a bad reduction string, uint8 / bool / out-of-range class targets: each a ValueError or
  TypeError whose message names the argument (a loss on mined pairs or triplets, marked
  ``mined``, takes an empty batch instead: a zero loss with zero gradients);

and for the production losses (the ones meant for a hot training loop), with value checks off:

* one forward + backward performs zero host syncs (counted with a dispatch mode);
* ``torch.compile(fullgraph=True)`` traces it, and its value and gradients equal eager mode.

Mathematics and outside references (torch, pytorch-metric-learning, scikit-learn, naive
formulas) stay in the per-module test files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import companion
from companion import contrastive as CT
from companion import imbalance as IB
from companion import invented as IV
from companion import linear as LN
from companion import logistic as LG
from companion import margin as M
from companion import minmax as MM
from companion import multilabel as ML
from companion import nce as NC
from companion import partial_fc as PF
from companion import siglip as SG
from companion import softmax as SM
from companion import zoo as Z
from tests.host_syncs import count_host_syncs

B, C, D = 6, 5, 4
F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, dtype: torch.dtype, seed: int = 0, scale: float = 1.0) -> Tensor:
    return (torch.randn(*shape, generator=_gen(seed), dtype=F64) * scale).to(dtype)


def _classes(n: int = B, c: int = C, seed: int = 1) -> Tensor:
    return torch.randint(c, (n,), generator=_gen(seed))


def _unit(*shape: int, dtype: torch.dtype, seed: int = 0) -> Tensor:
    x = torch.randn(*shape, generator=_gen(seed), dtype=F64)
    return (x / x.norm(dim=-1, keepdim=True)).to(dtype)


def _cosines(dtype: torch.dtype) -> Tensor:
    return (_unit(B, D, dtype=F64) @ _unit(C, D, dtype=F64, seed=2).T).to(dtype)


@dataclass
class Case:
    """One public loss and how to call it.

    Attributes:
        fn: the function, or a factory ``dtype -> module`` when ``module`` is true.
        inputs: ``dtype -> list of positional arguments``.
        floats: positions of the differentiable floating arguments; the first is the main one.
        none_shape: the shape of ``reduction="none"`` given the inputs (None: no reduction
            argument).
        class_target: position of an argument holding class indices (for the target rows).
        production: meant for a hot loop: zero host syncs and fullgraph compilation.
        kwargs: extra keyword arguments.
        low_precision: check float16 / bfloat16 finiteness.
        count: the "mean" reduction's denominator (default: the elements of the "none" output).
        module_reduction: the reduction is a constructor argument of the module.
        gradcheck_floats: the arguments gradcheck varies, where it is not all of ``floats``
            (a loss that treats a function of an input as a constant target by design).
        compiles: checked against eager mode under ``torch.compile`` (False for a loss that
            draws random numbers inside, whose compiled draws differ from eager ones).
        double_backward: second derivatives are checked too (``gradgradcheck``); False for the
            tiled paths, which refuse ``create_graph`` with a clear error instead.
        mined: a loss on pairs or triplets that a miner picked, which may be none: an empty
            batch gives a zero loss connected to the graph, where every other loss refuses it.
    """

    fn: Callable[..., Any]
    inputs: Callable[[torch.dtype], list[Any]]
    floats: tuple[int, ...] = (0,)
    none_shape: Callable[[list[Any]], tuple[int, ...]] | None = lambda a: (a[0].shape[0],)
    class_target: int | None = None
    production: bool = False
    module: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    low_precision: bool = True
    num_classes: int = C
    count: Callable[[list[Any]], Tensor | int] | None = None
    module_reduction: bool = False
    gradcheck_floats: tuple[int, ...] | None = None
    compiles: bool = True
    double_backward: bool = True
    mined: bool = False


def _logits_and_classes(dtype: torch.dtype) -> list[Any]:
    return [_randn(B, C, dtype=dtype), _classes()]


def _same_shape_pair(dtype: torch.dtype) -> list[Any]:
    return [_randn(B, D, dtype=dtype), _randn(B, D, dtype=dtype, seed=3)]


def _binary(dtype: torch.dtype) -> list[Any]:
    return [_randn(B, C, dtype=dtype), (torch.rand(B, C, generator=_gen(4)) < 0.5).to(dtype)]


def _probabilities(dtype: torch.dtype) -> list[Any]:
    p = torch.rand(B, C, generator=_gen(5), dtype=F64) * 0.9 + 0.05
    return [p.to(dtype), (torch.rand(B, C, generator=_gen(4)) < 0.5).to(dtype)]


def _output_layer(dtype: torch.dtype) -> list[Any]:
    """``(input, weight, target, bias)``: the bias is keyword-only in the losses."""
    return [
        _randn(B, D, dtype=dtype),
        _randn(20, D, dtype=dtype, seed=6, scale=0.5),
        _classes(c=20),
        _randn(20, dtype=dtype, seed=7, scale=0.1),
    ]


def _full_softmax(x: Tensor, w: Tensor, t: Tensor, b: Tensor, reduction: str = "mean") -> Tensor:
    return NC.full_softmax_loss(x, w, t, reduction, bias=b)


def _sampled(fn: Callable[..., Tensor], **extra: Any) -> Callable[..., Tensor]:
    """A sampled loss with 7 log-uniform negatives drawn beforehand (a fixed, seeded draw)."""
    sampler = NC.LogUniformSampler(20)
    negatives = sampler.sample(7, generator=_gen(8))

    def call(x: Tensor, w: Tensor, t: Tensor, b: Tensor, reduction: str = "mean") -> Tensor:
        return fn(
            x, w, t, sampler, 7, reduction=reduction, bias=b, negatives=negatives, **extra
        )  # fmt: skip

    return call


def _arcface(dtype: torch.dtype, reduction: str = "mean") -> nn.Module:
    torch.manual_seed(0)
    return M.ArcFaceLoss(D, C, reduction=reduction, dtype=dtype)


def _amsoftmax(dtype: torch.dtype, reduction: str = "mean") -> nn.Module:
    torch.manual_seed(0)
    return M.AMSoftmaxLoss(D, C, reduction=reduction, dtype=dtype)


def _lsoftmax(dtype: torch.dtype, reduction: str = "mean") -> nn.Module:
    torch.manual_seed(0)
    return M.LSoftmaxLoss(D, C, schedule=None, reduction=reduction, dtype=dtype)


def _asoftmax(dtype: torch.dtype, reduction: str = "mean") -> nn.Module:
    torch.manual_seed(0)
    return M.ASoftmaxLoss(D, C, schedule=None, reduction=reduction, dtype=dtype)


def _features_and_classes(dtype: torch.dtype) -> list[Any]:
    return [_randn(B, D, dtype=dtype), _classes()]


def _lsoftmax_inputs(dtype: torch.dtype) -> list[Any]:
    x, w = _randn(B, D, dtype=F64), _randn(C, D, dtype=F64, seed=2)
    t = _classes()
    norm = x.norm(dim=1) * w[t].norm(dim=1)
    return [(x @ w.T).to(dtype), t, norm.to(dtype)]


def _asoftmax_inputs(dtype: torch.dtype) -> list[Any]:
    norm = _randn(B, dtype=F64, seed=9).abs() + 0.5
    return [_cosines(dtype), _classes(), norm.to(dtype)]


def _min_max_inputs(dtype: torch.dtype) -> list[Any]:
    return [_randn(B, D, dtype=dtype), _randn(C, D, dtype=dtype, seed=2), _classes()]


def _label_embedding(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return MM.LabelEmbeddingClassifier(D, C, 3, dtype=dtype)


def _label_embedding_loss(head: MM.LabelEmbeddingClassifier) -> Callable[..., Tensor]:
    def call(x: Tensor, t: Tensor, reduction: str = "mean") -> Tensor:
        return head.loss(x, t, reduction=reduction)

    return call


def _multitask(dtype: torch.dtype) -> nn.Module:
    return Z.MultiTaskLoss(["regression", "classification"], learned=True).to(dtype)


def _clip_full(x: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    return CT.clip_loss(x, y, scale)


def _clip_chunked(x: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    return CT.clip_loss(x, y, scale, chunk_size=4)


def _clip_inputs(dtype: torch.dtype) -> list[Any]:
    return [
        _unit(B, D, dtype=dtype),
        _unit(B, D, dtype=dtype, seed=3),
        torch.tensor(10.0, dtype=dtype),
    ]


def _clip_module(dtype: torch.dtype) -> nn.Module:
    return CT.ClipLoss(temperature=0.1).to(dtype)


def _siglip_inputs(dtype: torch.dtype) -> list[Any]:
    return [*_unit_pair(dtype), torch.tensor(10.0, dtype=dtype), torch.tensor(-2.0, dtype=dtype)]


def _siglip_chunked(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    return SG.siglip_loss(x, y, scale, bias, chunk_size=4)


def _siglip_module(dtype: torch.dtype) -> nn.Module:
    return SG.SigLipLoss(device="cpu", dtype=dtype)


def _partial_fc_inputs(dtype: torch.dtype) -> list[Any]:
    return [_randn(B, D, dtype=dtype), _classes(c=12), _randn(12, D, dtype=dtype, seed=2)]


def _partial_fc(seeded: bool = False, **options: Any) -> Callable[..., Tensor]:
    """``seeded``: the same draw of sampled classes at every call (a fresh seeded generator)."""

    def call(x: Tensor, t: Tensor, w: Tensor, reduction: str = "mean") -> Tensor:
        if seeded:
            options["generator"] = _gen(9)
        out: Tensor = PF.partial_fc_loss(
            x, w, t, margin=(1.0, 0.5, 0.0), scale=16.0, reduction=reduction, **options
        )
        return out

    return call


def _partial_fc_module(dtype: torch.dtype, reduction: str = "mean") -> nn.Module:
    torch.manual_seed(0)
    return PF.PartialFC(
        D, 12, margin=(1.0, 0.0, 0.35), scale=16.0, chunk_size=5, reduction=reduction, dtype=dtype
    )


def _vocabulary(dtype: torch.dtype) -> list[Any]:
    """Hidden states, a 20-token output layer, targets (one ignored), a bias."""
    target = _classes(c=20)
    target[1] = -100
    return [_randn(B, D, dtype=dtype), _randn(20, D, dtype=dtype, seed=6, scale=0.5), target, _randn(20, dtype=dtype, seed=7, scale=0.1)]  # fmt: skip


def _linear_ce_options(x: Tensor, w: Tensor, t: Tensor, b: Tensor, reduction: str = "mean") -> Tensor:  # fmt: skip
    """The options at once (class weights aside: with a z-loss, "mean" then has two
    denominators), with tiles over the vocabulary (the rebuilding path)."""
    out: Tensor = LN.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction, label_smoothing=0.1, z_loss=1e-2, softcap=5.0, vocab_chunk_size=7)  # fmt: skip
    return out


def _linear_ce_module(dtype: torch.dtype, reduction: str = "mean") -> nn.Module:
    return LN.LinearCrossEntropyLoss(reduction=reduction, z_loss=1e-3, chunk_size=4)


def _unit_pair(dtype: torch.dtype) -> list[Any]:
    return [_unit(B, D, dtype=dtype), _unit(B, D, dtype=dtype, seed=3)]


CASES: dict[str, Case] = {
    # foundations
    "logistic_loss, soft target": Case(LG.logistic_loss, lambda dt: [_randn(B, dtype=dt), torch.rand(B, generator=_gen(4), dtype=F64).mul(0.8).add(0.1).to(dt)], floats=(0, 1)),
    "logistic_loss": Case(LG.logistic_loss, lambda dt: [_randn(B, dtype=dt), (torch.rand(B, generator=_gen(4)) < 0.5).to(dt)]),
    "cross_entropy": Case(SM.cross_entropy, _logits_and_classes, class_target=1),
    "cross_entropy, probabilities": Case(SM.cross_entropy, lambda dt: [_randn(B, C, dtype=dt), torch.softmax(_randn(B, C, dtype=F64, seed=3), 1).to(dt)]),
    "binary_cross_entropy_with_logits": Case(ML.binary_cross_entropy_with_logits, _binary, none_shape=lambda a: tuple(a[0].shape)),
    "binary_cross_entropy_with_logits, weights": Case(ML.binary_cross_entropy_with_logits, lambda dt: [*_binary(dt), _randn(B, 1, dtype=dt, seed=5).abs().add(0.5), _randn(C, dtype=dt, seed=6).abs().add(0.1)], floats=(0, 2, 3), none_shape=lambda a: tuple(a[0].shape), count=lambda a: a[0].numel()),
    "multilabel_soft_margin_loss": Case(ML.multilabel_soft_margin_loss, _binary),
    # the zoo
    "multiclass_hinge_loss": Case(Z.multiclass_hinge_loss, _logits_and_classes, class_target=1),
    "squared_hinge_loss": Case(Z.squared_hinge_loss, _logits_and_classes, class_target=1),
    "binary_hinge_loss": Case(Z.binary_hinge_loss, _binary, none_shape=lambda a: tuple(a[0].shape)),
    "mse_loss": Case(Z.mse_loss, _same_shape_pair, floats=(0, 1), none_shape=lambda a: tuple(a[0].shape)),
    "absolute_difference": Case(Z.absolute_difference, _same_shape_pair, floats=(0, 1), none_shape=lambda a: tuple(a[0].shape)),
    "huber_loss": Case(Z.huber_loss, _same_shape_pair, floats=(0, 1), none_shape=lambda a: tuple(a[0].shape)),
    "log_loss": Case(Z.log_loss, _probabilities, none_shape=lambda a: tuple(a[0].shape)),
    "cosine_distance": Case(Z.cosine_distance, _same_shape_pair, floats=(0, 1)),
    "cosine_distance, dim=0": Case(Z.cosine_distance, _same_shape_pair, floats=(0, 1), kwargs={"dim": 0}, none_shape=lambda a: (a[0].shape[1],)),
    "mean_pairwise_squared_error": Case(Z.mean_pairwise_squared_error, _same_shape_pair, floats=(0, 1)),
    "weighted_loss": Case(Z.weighted_loss, lambda dt: [_randn(B, dtype=dt).abs(), _randn(B, dtype=dt, seed=3).abs()], floats=(0, 1), count=lambda a: a[1].sum()),
    "MultiTaskLoss": Case(_multitask, lambda dt: [[_randn(1, dtype=dt).abs()[0], _randn(1, dtype=dt, seed=3).abs()[0]]], floats=(), none_shape=None, module=True),
    # home-made losses
    "dot_product_loss": Case(IV.dot_product_loss, _logits_and_classes, class_target=1),
    "inverse_loss": Case(IV.inverse_loss, _logits_and_classes, class_target=1),
    "inverse_power_loss": Case(IV.inverse_power_loss, _logits_and_classes, class_target=1),
    # imbalanced classes
    "focal_loss": Case(IB.focal_loss, _logits_and_classes, class_target=1, production=True),
    "focal_loss, gamma=0.5, alpha": Case(IB.focal_loss, lambda dt: [*_logits_and_classes(dt), 0.5, _randn(C, dtype=dt, seed=5).abs().add(0.5)], class_target=1, production=True, count=lambda a: a[3][a[1]].sum()),
    "sigmoid_focal_loss": Case(IB.sigmoid_focal_loss, _binary, none_shape=lambda a: tuple(a[0].shape), production=True),
    "asymmetric_loss": Case(IB.asymmetric_loss, _binary, none_shape=lambda a: tuple(a[0].shape), production=True),
    "logit_adjusted_cross_entropy": Case(IB.logit_adjusted_cross_entropy, lambda dt: [*_logits_and_classes(dt), torch.softmax(_randn(C, dtype=F64, seed=6), 0).to(dt)], class_target=1, production=True),
    "poly1_cross_entropy": Case(IB.poly1_cross_entropy, _logits_and_classes, class_target=1, production=True),
    # sampling
    "full_softmax_loss": Case(_full_softmax, _output_layer, floats=(0, 1, 3), class_target=2, num_classes=20),
    "nce_loss": Case(_sampled(NC.nce_loss), _output_layer, floats=(0, 1, 3), class_target=2, production=True, num_classes=20),
    "negative_sampling_loss": Case(_sampled(NC.negative_sampling_loss), _output_layer, floats=(0, 1, 3), class_target=2, production=True, num_classes=20),
    "sampled_softmax_loss": Case(_sampled(NC.sampled_softmax_loss), _output_layer, floats=(0, 1, 3), class_target=2, production=True, num_classes=20),
    "linear_cross_entropy": Case(LN.linear_cross_entropy, lambda dt: _vocabulary(dt)[:3], floats=(0, 1), class_target=2, production=True, num_classes=20, double_backward=False, kwargs={"chunk_size": 4}, count=lambda a: int((a[2] != -100).sum())),
    "linear_cross_entropy, every option": Case(_linear_ce_options, _vocabulary, floats=(0, 1, 3), class_target=2, production=True, num_classes=20, double_backward=False, count=lambda a: int((a[2] != -100).sum())),
    "LinearCrossEntropyLoss": Case(_linear_ce_module, lambda dt: _vocabulary(dt)[:3], floats=(0, 1), class_target=2, production=True, module=True, module_reduction=True, num_classes=20, double_backward=False, count=lambda a: int((a[2] != -100).sum())),
    "sampled_softmax_loss, sparse": Case(_sampled(NC.sampled_softmax_loss, sparse=True), _output_layer, floats=(0, 3), class_target=2, production=True, num_classes=20, low_precision=False),
    # contrast
    "contrastive_loss": Case(CT.contrastive_loss, lambda dt: [*_same_shape_pair(dt), (torch.rand(B, generator=_gen(4)) < 0.5).to(dt)], floats=(0, 1), mined=True),
    "triplet_loss": Case(CT.triplet_loss, lambda dt: [*_same_shape_pair(dt), _randn(B, D, dtype=dt, seed=5)], floats=(0, 1, 2), mined=True),
    "info_nce_loss": Case(CT.info_nce_loss, _unit_pair, floats=(0, 1)),
    "clip_loss": Case(_clip_full, _clip_inputs, floats=(0, 1, 2), none_shape=None, production=True),
    "clip_loss, chunked": Case(_clip_chunked, _clip_inputs, floats=(0, 1, 2), none_shape=None, production=True, double_backward=False),
    "ClipLoss": Case(_clip_module, _unit_pair, floats=(0, 1), none_shape=None, production=True, module=True),
    "supervised_contrastive_loss": Case(CT.supervised_contrastive_loss, lambda dt: [_unit(B, D, dtype=dt), torch.tensor([0, 0, 1, 1, 2, 2])]),
    "siglip_loss": Case(SG.siglip_loss, _siglip_inputs, floats=(0, 1, 2, 3), none_shape=None, production=True),
    "siglip_loss, chunked": Case(_siglip_chunked, _siglip_inputs, floats=(0, 1, 2, 3), none_shape=None, production=True, double_backward=False),
    "SigLipLoss": Case(_siglip_module, _unit_pair, floats=(0, 1), none_shape=None, production=True, module=True),
    "soft_target_clip_loss": Case(CT.soft_target_clip_loss, _clip_inputs, floats=(0, 1, 2), kwargs={"target_scale": 10.0}, gradcheck_floats=(2,)),
    # margins
    "large_margin_softmax_loss": Case(M.large_margin_softmax_loss, _lsoftmax_inputs, floats=(0, 2), class_target=1, production=True),
    "angular_softmax_loss": Case(M.angular_softmax_loss, _asoftmax_inputs, floats=(0, 2), class_target=1, production=True),
    "additive_margin_softmax_loss": Case(M.additive_margin_softmax_loss, lambda dt: [_cosines(dt), _classes()], class_target=1, production=True),
    "additive_angular_margin_loss": Case(M.additive_angular_margin_loss, lambda dt: [_cosines(dt), _classes()], class_target=1, production=True),
    "LSoftmaxLoss": Case(_lsoftmax, _features_and_classes, class_target=1, production=True, module=True, module_reduction=True),
    "ASoftmaxLoss": Case(_asoftmax, _features_and_classes, class_target=1, production=True, module=True, module_reduction=True),
    "AMSoftmaxLoss": Case(_amsoftmax, _features_and_classes, class_target=1, production=True, module=True, module_reduction=True),
    "ArcFaceLoss": Case(_arcface, _features_and_classes, class_target=1, production=True, module=True, module_reduction=True),
    "partial_fc_loss": Case(_partial_fc(), _partial_fc_inputs, floats=(0, 2), class_target=1, production=True, num_classes=12),
    "partial_fc_loss, chunked": Case(_partial_fc(chunk_size=5), _partial_fc_inputs, floats=(0, 2), class_target=1, production=True, num_classes=12, double_backward=False),
    "partial_fc_loss, sampled": Case(_partial_fc(seeded=True, sample_rate=0.5, chunk_size=5), _partial_fc_inputs, floats=(0, 2), class_target=1, production=True, num_classes=12, compiles=False, double_backward=False),
    "PartialFC": Case(_partial_fc_module, _features_and_classes, class_target=1, production=True, module=True, module_reduction=True, num_classes=12, double_backward=False),
    "min_max_loss": Case(MM.min_max_loss, _min_max_inputs, floats=(0, 1), class_target=2, production=True),
    "min_max_loss, l2, sampled negatives, soft minimum": Case(MM.min_max_loss, _min_max_inputs, floats=(0, 1), class_target=2, kwargs={"distance": "l2", "negatives": MM.sample_other_classes(_classes(), C, 2, generator=_gen(3)), "temperature": 0.5}),
    "min_max_loss, kl, soft minimum": Case(MM.min_max_loss, _min_max_inputs, floats=(0, 1), class_target=2, kwargs={"distance": "kl", "temperature": 0.5}),
    "LabelEmbeddingClassifier.loss": Case(lambda dt: _label_embedding_loss(_label_embedding(dt)), _features_and_classes, class_target=1, production=True, module=True),
}  # fmt: skip

PRODUCTION = [name for name, case in CASES.items() if case.production]
COMPILED = [name for name in PRODUCTION if CASES[name].compiles]
REDUCED = [name for name, case in CASES.items() if case.none_shape is not None]


def _make(case: Case, dtype: torch.dtype) -> tuple[Callable[..., Any], list[Any]]:
    fn = case.fn(dtype) if case.module else case.fn
    return fn, case.inputs(dtype)


def _parameters(fn: Any) -> list[Tensor]:
    if isinstance(fn, nn.Module):
        return [p for p in fn.parameters() if p.requires_grad]
    owner = getattr(fn, "__closure__", None)
    params: list[Tensor] = []
    for cell in owner or ():
        if isinstance(cell.cell_contents, nn.Module):
            params += [p for p in cell.cell_contents.parameters() if p.requires_grad]
    return params


def _leaves(case: Case, args: list[Any]) -> list[Tensor]:
    for i in case.floats:
        args[i] = args[i].detach().clone().requires_grad_(True)
    return [args[i] for i in case.floats]


def _call(case: Case, fn: Callable[..., Any], args: list[Any], **kwargs: Any) -> Tensor:
    out: Tensor = fn(*args, **case.kwargs, **kwargs)
    return out


def _call_reduced(case: Case, fn: Callable[..., Any], args: list[Any], reduction: str) -> Tensor:
    """Call with ``reduction``, given to the module's constructor where it lives there."""
    if case.module_reduction:
        dtype = next(a.dtype for a in args if isinstance(a, Tensor) and a.is_floating_point())
        return _call(case, case.fn(dtype, reduction=reduction), args)
    return _call(case, fn, args, reduction=reduction)


# ------------------------------------------------------------------------------------------
# reductions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REDUCED)
def test_none_shape_and_sum_is_mean_times_count(name: str) -> None:
    case = CASES[name]
    fn, args = _make(case, F64)
    assert case.none_shape is not None
    none = _call_reduced(case, fn, args, "none")
    assert tuple(none.shape) == case.none_shape(args)
    total = _call_reduced(case, fn, args, "sum")
    mean = _call_reduced(case, fn, args, "mean")
    assert total.shape == mean.shape == ()
    torch.testing.assert_close(total, none.sum(), rtol=1e-12, atol=1e-12)
    count = none.numel() if case.count is None else case.count(args)
    torch.testing.assert_close(total, mean * count, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.double_backward])
def test_tiled_paths_refuse_double_backward(name: str) -> None:
    """A gradient penalty through a tiled backward is refused, not silently wrong."""
    case = CASES[name]
    fn, args = _make(case, F64)
    leaves = _leaves(case, args)
    loss = _call(case, fn, args)
    with pytest.raises(RuntimeError, match=r"does not support double backward"):
        torch.autograd.grad(loss, leaves[0], create_graph=True)
    (g,) = torch.autograd.grad(_call(case, fn, args), leaves[0])  # a first derivative is fine
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("name", CASES)
def test_gradcheck_float64(name: str) -> None:
    case = CASES[name]
    fn, args = _make(case, F64)
    leaves = _leaves(case, args)
    params = _parameters(fn)
    if not leaves:  # a module whose only differentiable inputs are its parameters
        leaves = [a.detach().clone().requires_grad_(True) for a in args[0]]
        params_in = len(leaves)

        def wrapped(*xs: Tensor) -> Tensor:
            return _call(case, fn, [list(xs[:params_in])])

        assert torch.autograd.gradcheck(wrapped, tuple(leaves))
        return

    varied = case.floats if case.gradcheck_floats is None else case.gradcheck_floats

    def function(*xs: Tensor) -> Tensor:
        full = list(args)
        for i, x in zip(varied, xs, strict=True):
            full[i] = x
        return _call(case, fn, full)

    assert torch.autograd.gradcheck(function, tuple(args[i] for i in varied))
    if case.double_backward:
        assert torch.autograd.gradgradcheck(function, tuple(args[i] for i in varied))
    if params:  # and the parameters' gradient against finite differences of the loss
        loss = _call(case, fn, args)
        grads = torch.autograd.grad(loss, params)
        p, g = params[0], grads[0]
        direction = torch.randn(p.shape, generator=_gen(11), dtype=F64)
        h = 1e-6
        with torch.no_grad():
            p.add_(h * direction)
            up = _call(case, fn, args)
            p.sub_(2 * h * direction)
            down = _call(case, fn, args)
            p.add_(h * direction)
        fd = (up - down) / (2 * h)
        torch.testing.assert_close(fd, (g * direction).sum(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.low_precision])
def test_finite_in_low_precision(name: str, dtype: torch.dtype) -> None:
    case = CASES[name]
    fn, args = _make(case, dtype)
    leaves = _leaves(case, args)
    loss = _call(case, fn, args)
    assert loss.dtype == dtype, f"{name} returned {loss.dtype} for {dtype} inputs"
    targets = leaves + _parameters(fn)
    grads = torch.autograd.grad(loss, targets) if targets else ()
    assert torch.isfinite(loss.float()).all()
    for g in grads:
        assert torch.isfinite(g.float()).all()


@pytest.mark.parametrize("name", CASES)
def test_inputs_are_not_modified(name: str) -> None:
    case = CASES[name]
    fn, args = _make(case, F64)
    leaves = _leaves(case, args)
    before = [a.detach().clone() if isinstance(a, Tensor) else a for a in args]
    loss = _call(case, fn, args)
    if leaves:
        loss.backward()
    for a, b in zip(args, before, strict=True):
        if isinstance(a, Tensor):
            assert torch.equal(a.detach(), b), f"{name} modified an input"


# ------------------------------------------------------------------------------------------
# the bad-input table
# ------------------------------------------------------------------------------------------


def _empty_batch(args: list[Any], batch: int) -> list[Any]:
    """The arguments with zero rows: every tensor whose first dimension is the batch, cut."""
    return [
        a[:0] if isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == batch else a for a in args
    ]


def _bad_rows(case: Case) -> list[tuple[str, Callable[[list[Any]], list[Any]], type[Exception]]]:
    """(row name, corruption of the arguments, expected error)."""
    rows: list[tuple[str, Callable[[list[Any]], list[Any]], type[Exception]]] = []
    main = case.floats[0] if case.floats else None
    if main is not None:

        def put(value: Callable[[Tensor], Tensor]) -> Callable[[list[Any]], list[Any]]:
            def corrupt(args: list[Any]) -> list[Any]:
                out = list(args)
                out[main] = value(args[main])
                return out

            return corrupt

        def with_entry(v: float) -> Callable[[Tensor], Tensor]:
            def change(x: Tensor) -> Tensor:
                y = x.clone()
                y.view(-1)[0] = v
                return y

            return change

        rows += [
            ("integer main input", put(lambda x: x.round().long()), TypeError),
            ("main input not a tensor", put(lambda x: x.tolist()), TypeError),
            ("NaN in the main input", put(with_entry(math.nan)), ValueError),
            ("+inf in the main input", put(with_entry(math.inf)), ValueError),
            ("-inf in the main input", put(with_entry(-math.inf)), ValueError),
        ]
        if case.inputs(F64)[main].dim() >= 1:
            rows.append(("main input with an extra dimension", put(lambda x: x[None]), ValueError))
            if not case.mined:  # mined losses: test_mined_empty_batch_is_a_zero_loss_...
                batch = case.inputs(F64)[main].shape[0]
                rows.append(("empty batch", lambda a: _empty_batch(a, batch), ValueError))
    if case.class_target is not None:
        k = case.class_target

        def target(value: Callable[[Tensor], Tensor]) -> Callable[[list[Any]], list[Any]]:
            def corrupt(args: list[Any]) -> list[Any]:
                out = list(args)
                out[k] = value(args[k])
                return out

            return corrupt

        rows += [
            ("uint8 target", target(lambda t: t.to(torch.uint8)), TypeError),
            ("bool target", target(lambda t: t > 0), TypeError),
            ("float target", target(lambda t: t.double()), TypeError),
            (
                "target out of range",
                target(lambda t: t.clone().fill_(case.num_classes)),
                ValueError,
            ),
            ("negative target", target(lambda t: t.clone().fill_(-1)), ValueError),
        ]
    return rows


BAD = [
    pytest.param(name, row, bad, error, id=f"{name}: {row}")
    for name, case in CASES.items()
    for row, bad, error in _bad_rows(case)
]


@pytest.mark.parametrize(("name", "row", "corrupt", "error"), BAD)
def test_bad_input(
    name: str, row: str, corrupt: Callable[[list[Any]], list[Any]], error: type[Exception]
) -> None:
    case = CASES[name]
    fn, args = _make(case, F64)
    bad = corrupt(args)
    with pytest.raises(error) as info:
        _call(case, fn, bad)
    message = str(info.value)
    # the message opens with the argument's name and says what was wrong
    assert re.match(r"^[A-Za-z_][\w\[\]]* (must|contains|and) ", message), (
        f"{row}: the message does not name the argument: {message!r}"
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.mined])
def test_mined_empty_batch_is_a_zero_loss_with_zero_gradients(name: str, reduction: str) -> None:
    """A miner that found no pair or triplet: zero (an empty tensor for "none"), not an error."""
    case = CASES[name]
    fn, args = _make(case, F64)
    leaves = _leaves(case, args)
    empty = _empty_batch(args, args[case.floats[0]].shape[0])  # slices of the leaves
    loss = _call_reduced(case, fn, empty, reduction)
    assert loss.shape == ((0,) if reduction == "none" else ())
    assert loss.dtype == F64 and not loss.detach().ne(0).any()
    for g in torch.autograd.grad(loss.sum(), leaves):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("name", REDUCED)
def test_bad_reduction(name: str) -> None:
    case = CASES[name]
    fn, args = _make(case, F64)
    with pytest.raises(ValueError, match="reduction must be one of"):
        _call_reduced(case, fn, args, "average")


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.floats])
def test_value_checks_can_be_turned_off(name: str) -> None:
    """With value checks off a NaN is not looked for (no error), and the switch is restored."""
    case = CASES[name]
    fn, args = _make(case, F64)
    bad = list(args)
    main = case.floats[0]
    bad[main] = args[main].clone()
    bad[main].view(-1)[-1] = math.nan
    with companion.value_checks(False):
        _call(case, fn, bad)
    assert companion.value_checks_enabled()
    with pytest.raises(ValueError):
        _call(case, fn, bad)


# ------------------------------------------------------------------------------------------
# production: zero host syncs and fullgraph compilation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRODUCTION)
def test_zero_host_syncs_with_value_checks_off(name: str) -> None:
    case = CASES[name]
    fn, args = _make(case, torch.float32)
    leaves = _leaves(case, args)
    with companion.value_checks(False), count_host_syncs() as syncs:
        loss = _call(case, fn, args)
        loss.backward()
    assert syncs() == 0, f"{name}: {syncs()} host syncs in one forward + backward"
    assert all(x.grad is not None for x in leaves)


@pytest.mark.parametrize("name", COMPILED)
def test_compiles_with_fullgraph_and_equals_eager(name: str) -> None:
    case = CASES[name]
    torch._dynamo.reset()
    eager_fn, args = _make(case, torch.float32)
    compiled_fn, args_c = _make(case, torch.float32)
    leaves = _leaves(case, args)
    leaves_c = _leaves(case, args_c)
    compiled = torch.compile(compiled_fn, fullgraph=True, backend="aot_eager")
    with companion.value_checks(False):
        want = _call(case, eager_fn, args)
        got = _call(case, compiled, args_c)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    grads_want = torch.autograd.grad(want, leaves + _parameters(eager_fn))
    grads_got = torch.autograd.grad(got, leaves_c + _parameters(compiled_fn))
    for g, w in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_every_public_loss_is_in_the_registry() -> None:
    """A new loss joins the contract by one registry line; this test makes sure it does."""
    modules = [LG, SM, ML, Z, IV, NC, CT, M, MM, PF, SG, IB, LN]
    names = {
        name
        for module in modules
        for name in module.__all__
        if "loss" in name.lower() and callable(getattr(module, name))
    }
    covered = {key.split(",")[0].split(".")[0] for key in CASES}
    metrics = {"hamming_loss"}  # a metric (a Python float for reporting), not a loss to train
    missing = sorted(names - covered - metrics)
    assert not missing, f"public losses without a line in CASES: {missing}"
