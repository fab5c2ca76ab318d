"""companion.siglip: open_clip's formula, the tiles, gradients, the production contract, bad input.

The ring across real processes is tested in test_distributed_contract.py.
"""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import companion
from companion import siglip as S
from tests.conftest import LOW_PRECISION, assert_finite
from tests.host_syncs import count_host_syncs

F64 = torch.float64


def unit(b: int, d: int, seed: int, dtype: torch.dtype = F64) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=gen, dtype=F64), dim=1).to(dtype)


def open_clip_formula(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """open_clip's SigLipLoss on one process, transcribed by hand from its formula.

    logits = logit_scale * image @ text.T + logit_bias; labels = 2 * eye - 1 (+1 on the
    diagonal, -1 elsewhere); loss = -sum(logsigmoid(labels * logits)) / number of images.
    """
    logits = scale * image @ text.T + bias
    labels = 2 * torch.eye(image.shape[0], dtype=image.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / image.shape[0]


def values_and_grads(fn: Callable[..., Tensor], *inputs: Tensor) -> tuple[Tensor, ...]:
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    value = fn(*leaves)
    return (value.detach(), *torch.autograd.grad(value, leaves))


NAMES = ("loss", "d image", "d text", "d scale", "d bias")


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 100])
@pytest.mark.parametrize(("scale", "bias"), [(10.0, -10.0), (1.0, 0.0), (37.0, 4.0)])
def test_equals_open_clip_formula_with_gradients(
    chunk: int | None, scale: float, bias: float
) -> None:
    image, text = unit(9, 5, 0), unit(9, 5, 1)
    inputs = (image, text, torch.tensor(scale, dtype=F64), torch.tensor(bias, dtype=F64))
    got = values_and_grads(lambda i, t, s, b: S.siglip_loss(i, t, s, b, chunk), *inputs)
    want = values_and_grads(open_clip_formula, *inputs)
    for name, g, w in zip(NAMES, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize(("batch", "chunk"), [(37, 8), (10, 3), (5, 1), (7, 7), (1, 1)])
def test_chunked_equals_full(batch: int, chunk: int) -> None:
    image, text = unit(batch, 6, 2), unit(batch, 6, 3)
    inputs = (image, text, torch.tensor(8.0, dtype=F64), torch.tensor(-5.0, dtype=F64))
    full = values_and_grads(lambda i, t, s, b: S.siglip_loss(i, t, s, b), *inputs)
    tiled = values_and_grads(lambda i, t, s, b: S.siglip_loss(i, t, s, b, chunk), *inputs)
    for name, f, t in zip(NAMES, full, tiled, strict=True):
        torch.testing.assert_close(t, f, rtol=1e-12, atol=1e-13, msg=name)


def test_gradient_equals_the_derived_formula() -> None:
    # d L / d logits = (sigmoid(logits) - I) / B
    b, s, bias = 8, 6.0, -3.0
    image, text = unit(b, 4, 4), unit(b, 4, 5)
    inputs = (image, text, torch.tensor(s, dtype=F64), torch.tensor(bias, dtype=F64))
    _, d_image, d_text, d_scale, d_bias = values_and_grads(
        lambda i, t, sc, bi: S.siglip_loss(i, t, sc, bi, 3), *inputs
    )
    cos = image @ text.T
    g = (torch.sigmoid(s * cos + bias) - torch.eye(b, dtype=F64)) / b
    torch.testing.assert_close(d_image, s * g @ text, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d_text, s * g.T @ image, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d_scale, (g * cos).sum(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d_bias, g.sum(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [None, 3])
def test_gradcheck(chunk: int | None) -> None:
    inputs = (unit(6, 3, 6), unit(6, 3, 7), torch.tensor(4.0, dtype=F64), torch.tensor(-2.0))
    inputs = tuple(x.to(F64).requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(lambda i, t, s, b: S.siglip_loss(i, t, s, b, chunk), inputs)


@pytest.mark.parametrize("chunk", [None, 2])
def test_bias_only_and_scale_only_gradients_against_finite_differences(
    chunk: int | None,
) -> None:
    image, text = unit(7, 4, 8), unit(7, 4, 9)
    s0, b0, h = 5.0, -4.0, 1e-6

    def loss(s: float | Tensor, b: float | Tensor) -> Tensor:
        return S.siglip_loss(image, text, s, b, chunk)

    bias = torch.tensor(b0, dtype=F64, requires_grad=True)
    (d_bias,) = torch.autograd.grad(loss(s0, bias), bias)  # the scale is a plain number
    fd_bias = (loss(s0, b0 + h) - loss(s0, b0 - h)) / (2 * h)
    torch.testing.assert_close(d_bias, fd_bias, rtol=1e-7, atol=1e-9)
    scale = torch.tensor(s0, dtype=F64, requires_grad=True)
    (d_scale,) = torch.autograd.grad(loss(scale, b0), scale)  # the bias is a plain number
    fd_scale = (loss(s0 + h, b0) - loss(s0 - h, b0)) / (2 * h)
    torch.testing.assert_close(d_scale, fd_scale, rtol=1e-7, atol=1e-9)


def test_only_text_needs_a_gradient_and_upstream_factor() -> None:
    image, text = unit(9, 4, 10), unit(9, 4, 11)
    text_leaf = text.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(2.5 * S.siglip_loss(image, text_leaf, 3.0, -1.0, 4), text_leaf)
    text_ref = text.clone().requires_grad_(True)
    s, b = torch.tensor(3.0, dtype=F64), torch.tensor(-1.0, dtype=F64)
    (want,) = torch.autograd.grad(2.5 * open_clip_formula(image, text_ref, s, b), text_ref)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    with torch.no_grad():  # no gradient wanted: the tiles compute the value alone
        value = S.siglip_loss(image, text, 3.0, -1.0, 4)
    torch.testing.assert_close(value, open_clip_formula(image, text, s, b))


def test_initial_loss_and_the_bias() -> None:
    # with t ~ 0 every logit is b: B * loss = softplus(-b) + (B - 1) softplus(b)
    image, text = unit(16, 4, 12), unit(16, 4, 13)
    for b in (0.0, -10.0):
        got = S.siglip_loss(image, text, 1e-9, b)
        want = math.log1p(math.exp(-b)) + 15 * math.log1p(math.exp(b))
        torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=1e-7, atol=0)
    assert S.siglip_loss(image, text, 1e-9, -10.0) < S.siglip_loss(image, text, 1e-9, 0.0) / 1.1


def test_full_matrix_supports_double_backward_tiles_refuse_it() -> None:
    inputs = tuple(
        x.requires_grad_()
        for x in (unit(5, 3, 14), unit(5, 3, 15), torch.tensor(3.0, dtype=F64), torch.tensor(-1.0))
    )
    inputs = tuple(x.to(F64) for x in inputs)
    assert torch.autograd.gradgradcheck(lambda i, t, s, b: S.siglip_loss(i, t, s, b), inputs)
    image = unit(5, 3, 16).requires_grad_()
    with pytest.raises(RuntimeError, match=r"siglip_loss with chunk_size does not support double"):
        torch.autograd.grad(
            S.siglip_loss(image, unit(5, 3, 17), 2.0, -1.0, 2), image, create_graph=True
        )


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("chunk", [None, 5])
def test_finite_at_extremes(dtype: torch.dtype, chunk: int | None) -> None:
    for norm, scale, bias in ((100.0, 1.0, 0.0), (1.0, 1e4, -10.0), (1.0, 10.0, -1e4)):
        image = (unit(12, 4, 18) * norm).to(dtype).requires_grad_()
        text = (unit(12, 4, 19) * norm).to(dtype).requires_grad_()
        s = torch.tensor(scale, requires_grad=True)
        b = torch.tensor(bias, requires_grad=True)
        loss = S.siglip_loss(image, text, s, b, chunk)
        grads = torch.autograd.grad(loss, (image, text, s, b))
        assert loss.dtype == dtype
        assert_finite(loss, *grads)
        want = open_clip_formula(
            image.detach().double(), text.detach().double(), torch.tensor(scale), bias
        )
        tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(loss.double(), want, rtol=tol, atol=tol * 10)


def test_bfloat16_tiled_close_to_full() -> None:
    image, text = unit(20, 8, 20, torch.bfloat16), unit(20, 8, 21, torch.bfloat16)
    full = values_and_grads(lambda i, t: S.siglip_loss(i, t, 10.0, -10.0), image, text)
    tiled = values_and_grads(lambda i, t: S.siglip_loss(i, t, 10.0, -10.0, 6), image, text)
    for f, t in zip(full, tiled, strict=True):
        assert t.dtype == torch.bfloat16
        torch.testing.assert_close(t.float(), f.float(), rtol=3e-2, atol=3e-3)


def test_module_parameters_and_initialisation() -> None:
    module = S.SigLipLoss()
    assert {name for name, _ in module.named_parameters()} == {"log_scale", "bias"}
    torch.testing.assert_close(module.log_scale.detach(), torch.tensor(math.log(10.0)))
    torch.testing.assert_close(module.bias.detach(), torch.tensor(-10.0))
    image, text = unit(6, 3, 22, torch.float32), unit(6, 3, 23, torch.float32)
    loss = module(image, text)
    torch.testing.assert_close(loss, S.siglip_loss(image, text, 10.0, -10.0))
    loss.backward()
    assert module.log_scale.grad is not None and module.bias.grad is not None
    # d loss / d t' = t * d loss / d t
    scale = torch.tensor(10.0, requires_grad=True)
    (d_scale,) = torch.autograd.grad(S.siglip_loss(image, text, scale, -10.0), scale)
    torch.testing.assert_close(module.log_scale.grad, 10.0 * d_scale)
    chunked = S.SigLipLoss(init_log_scale=0.0, init_bias=1.0, chunk_size=4, dtype=F64)
    assert chunked.bias.dtype == F64
    assert "chunk_size=4" in repr(chunked) and "bias=1" in repr(chunked)
    torch.testing.assert_close(
        chunked(image.double(), text.double()), S.siglip_loss(image.double(), text.double(), 1, 1)
    )


# --------------------------------------------------------------------------------------------
# The production contract
# --------------------------------------------------------------------------------------------

CHUNKED_MODULE, FULL_MODULE = S.SigLipLoss(chunk_size=4), S.SigLipLoss()
CALLS: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "siglip_loss full": lambda i, t, s, b: S.siglip_loss(i, t, s, b),
    "siglip_loss chunked": lambda i, t, s, b: S.siglip_loss(i, t, s, b, 3),
    "SigLipLoss chunked": lambda i, t, s, b: CHUNKED_MODULE(i, t) * s + b,
    "SigLipLoss full": lambda i, t, s, b: FULL_MODULE(i, t) * s + b,
}


def float_inputs() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (
        unit(10, 4, 24, torch.float32),
        unit(10, 4, 25, torch.float32),
        torch.tensor(5.0),
        torch.tensor(-3.0),
    )


@pytest.mark.parametrize("name", list(CALLS))
def test_no_host_sync_with_value_checks_off(name: str) -> None:
    leaves = [x.requires_grad_() for x in float_inputs()]
    with companion.value_checks(False), count_host_syncs() as syncs:
        CALLS[name](*leaves).backward()
    assert syncs() == 0
    with count_host_syncs() as syncs:
        CALLS[name](*leaves).backward()
    assert syncs() > 0


@pytest.mark.parametrize("name", list(CALLS))
def test_compiles_as_one_graph_and_equals_eager(name: str) -> None:
    fn = CALLS[name]
    torch._dynamo.reset()
    with companion.value_checks(False):
        eager = values_and_grads(fn, *float_inputs())
        compiled = values_and_grads(
            torch.compile(fn, fullgraph=True, backend="aot_eager"), *float_inputs()
        )
    for n, e, c in zip(NAMES, eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=n)


def test_chunked_compiles_with_inductor_and_equals_eager() -> None:
    def fn(i: Tensor, t: Tensor, s: Tensor, b: Tensor) -> Tensor:
        return S.siglip_loss(i, t, s, b, chunk_size=4)

    torch._dynamo.reset()
    eager = values_and_grads(fn, *float_inputs())
    compiled = values_and_grads(torch.compile(fn, fullgraph=True), *float_inputs())
    for n, e, c in zip(NAMES, eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=n)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(S)
    assert result.attempted > 0 and result.failed == 0
    for name in S.__all__:
        doc = getattr(S, name).__doc__ or ""
        assert "Examples:" in doc and "Shape:" in doc, name


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

GOOD = unit(4, 3, 26)
BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"text_features": unit(5, 3, 0)}, ValueError, r"same batch size .* 4 .* 5"),
    ({"text_features": unit(4, 2, 0)}, ValueError, r"text_features must have the same shape"),
    ({"image_features": GOOD[0]}, ValueError, r"image_features must have 2 dimension\(s\)"),
    ({"image_features": GOOD[:0], "text_features": GOOD[:0]}, ValueError, r"must not be empty"),
    ({"image_features": GOOD.long()}, TypeError, r"image_features must be a floating-point"),
    ({"text_features": GOOD.float()}, TypeError, r"text_features must have the same dtype"),
    ({"image_features": GOOD.clone().fill_(math.inf)}, ValueError, r"image_features must be fin"),
    ({"text_features": GOOD.clone().fill_(math.nan)}, ValueError, r"text_features contains NaN"),
    ({"logit_scale": 0.0}, ValueError, r"logit_scale must be a finite positive number, got 0.0"),
    ({"logit_scale": torch.tensor(-1.0)}, ValueError, r"logit_scale must be a finite positive"),
    ({"logit_scale": torch.ones(2)}, ValueError, r"logit_scale must be a scalar .* \(2,\)"),
    ({"logit_scale": "10"}, TypeError, r"logit_scale must be a float or a scalar tensor"),
    (
        {"logit_scale": nn.Parameter(torch.tensor(math.log(10.0)))},
        TypeError,
        r"logit_scale is an nn.Parameter.*\.exp\(\)",
    ),
    ({"logit_bias": math.inf}, ValueError, r"logit_bias must be a finite number, got inf"),
    ({"logit_bias": torch.tensor(math.nan)}, ValueError, r"logit_bias contains NaN"),
    ({"logit_bias": torch.tensor(math.inf)}, ValueError, r"logit_bias must be finite"),
    ({"logit_bias": torch.zeros(3)}, ValueError, r"logit_bias must be a scalar"),
    ({"logit_bias": True}, TypeError, r"logit_bias must be a float or a scalar tensor, got bool"),
    ({"logit_bias": "-10"}, TypeError, r"logit_bias must be a float or a scalar tensor, got str"),
    ({"chunk_size": 0}, ValueError, r"chunk_size must be at least 1, got 0"),
    ({"chunk_size": 2.0}, TypeError, r"chunk_size must be an int, got float"),
]


@pytest.mark.parametrize(("change", "error", "match"), BAD)
def test_bad_input(change: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs: dict[str, Any] = {
        "image_features": GOOD,
        "text_features": unit(4, 3, 27),
        "logit_scale": 10.0,
        "logit_bias": -10.0,
    }
    kwargs.update(change)
    with pytest.raises(error, match=match):
        S.siglip_loss(**kwargs)


def test_module_bad_input() -> None:
    with pytest.raises(TypeError, match=r"init_bias must be a real number"):
        S.SigLipLoss(init_bias="-10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"init_log_scale must be a finite number"):
        S.SigLipLoss(init_log_scale=math.inf)
    with pytest.raises(ValueError, match=r"chunk_size must be at least 1"):
        S.SigLipLoss(chunk_size=0)
