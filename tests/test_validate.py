"""The shared input checks: each bad input gets a TypeError/ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

from companion import _validate as v


def test_check_tensor_rejects_non_tensors_and_integers() -> None:
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        v.check_tensor([1.0], "x")
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor .* torch.int64"):
        v.check_tensor(torch.tensor([1, 2]), "x")


def test_check_tensor_ndim_empty_nan() -> None:
    with pytest.raises(ValueError, match=r"logits must have 2 dimension\(s\), got 1 .*\(3,\)"):
        v.check_tensor(torch.zeros(3), "logits", ndim=2)
    with pytest.raises(ValueError, match=r"logits must not be empty"):
        v.check_tensor(torch.zeros(0, 3), "logits")
    with pytest.raises(ValueError, match=r"logits contains NaN"):
        v.check_tensor(torch.tensor([0.0, float("nan")]), "logits")
    x = torch.tensor([float("inf")])
    assert v.check_tensor(x, "x", allow_inf=True) is x  # the sigmoid family's limits
    with pytest.raises(ValueError, match="x must be finite, got an infinite entry"):
        v.check_tensor(x, "x")  # a loss refuses infinities
    with pytest.raises(ValueError, match="x must be finite"):
        v.check_finite(x, "x")


def test_value_checks_switch() -> None:
    """Value checks off: NaN and out-of-range targets are not looked for; metadata still is."""
    nan = torch.tensor([0.0, float("nan")])
    assert v.value_checks_enabled()
    with v.value_checks(False):
        assert not v.value_checks_enabled()
        assert v.check_tensor(nan, "x") is nan
        v.check_class_index(torch.tensor([7]), "target", 3)
        with pytest.raises(TypeError, match="x must be a floating-point tensor"):
            v.check_tensor(torch.tensor([1, 2]), "x")
        with pytest.raises(TypeError, match="target must hold integer class indices"):
            v.check_class_index(torch.tensor([1], dtype=torch.uint8), "target", 3)
        with v.value_checks(True):
            with pytest.raises(ValueError, match="x contains NaN"):
                v.check_tensor(nan, "x")
        assert not v.value_checks_enabled()
    assert v.value_checks_enabled()
    v.set_value_checks(False)
    try:
        assert not v.value_checks_enabled()
    finally:
        v.set_value_checks(True)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        v.set_value_checks(1)  # type: ignore[arg-type]


def test_class_index_dtypes() -> None:
    """int32 is accepted and returned as int64; uint8 and bool (masks when indexing) are not."""
    out = v.check_class_index(torch.tensor([0, 2], dtype=torch.int32), "target", 3)
    assert out.dtype == torch.int64 and out.tolist() == [0, 2]
    for dtype in (torch.uint8, torch.bool, torch.int16, torch.int8):
        with pytest.raises(TypeError, match="target must hold integer class indices"):
            v.check_class_index(torch.ones(2, dtype=dtype), "target", 3)


def test_range_message_shows_the_value() -> None:
    """Finding 8: a target of 1.0000001 is reported with its digits, not as 'max 1'."""
    with pytest.raises(ValueError, match=r"got 1\.0000001"):
        v.check_in_range(torch.tensor([0.5, 1.0000001]), "target", 0.0, 1.0)


def test_check_real_rejects_bool_and_str() -> None:
    for bad in (True, "0.07", None):
        with pytest.raises(TypeError, match="temperature must be a real number"):
            v.check_positive(bad, "temperature")


def test_weighted_mean_with_all_zero_weights_is_zero() -> None:
    loss = torch.tensor([1.0, 2.0], requires_grad=True)
    out = v.reduce_loss(loss, "mean", torch.zeros(2))
    assert out.item() == 0.0
    (g,) = torch.autograd.grad(out, loss)
    assert torch.equal(g, torch.zeros(2))


def test_batch_and_shape_checks() -> None:
    with pytest.raises(ValueError, match=r"logits and target must have the same batch size"):
        v.check_batch_size(torch.zeros(4, 3), "logits", torch.zeros(5), "target")
    with pytest.raises(ValueError, match=r"target must have the same shape as logits \(4, 3\)"):
        v.check_same_shape(torch.zeros(4, 3), "logits", torch.zeros(4, 2), "target")
    with pytest.raises(TypeError, match=r"weight must have the same dtype as logits"):
        v.check_same_dtype_device(
            torch.zeros(2), "logits", torch.zeros(2, dtype=torch.float64), "weight"
        )


def test_class_index_checks() -> None:
    with pytest.raises(TypeError, match=r"target must hold integer class indices .*float32"):
        v.check_class_index(torch.tensor([0.0, 1.0]), "target", 3)
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 2\] .* got 3"):
        v.check_class_index(torch.tensor([0, 3]), "target", 3)
    with pytest.raises(ValueError, match=r"got -1"):
        v.check_class_index(torch.tensor([-1, 0]), "target", 3)
    with pytest.raises(ValueError, match=r"target must have shape \(2,\), got \(3,\)"):
        v.check_class_index(torch.tensor([0, 1, 2]), "target", 3, batch_shape=(2,))


def test_probability_and_scalar_checks() -> None:
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0.0, 1.0\]"):
        v.check_probabilities(torch.tensor([[1.5, -0.5]]), "target")
    with pytest.raises(ValueError, match=r"sum to 1 along dim -1"):
        v.check_probabilities(torch.tensor([[0.2, 0.2]]), "target")
    with pytest.raises(ValueError, match=r"margin must be a finite positive number, got 0.0"):
        v.check_positive(0, "margin")
    with pytest.raises(ValueError, match=r"finite non-negative"):
        v.check_positive(float("nan"), "margin", allow_zero=True)
    with pytest.raises(TypeError, match=r"num_samples must be an int, got bool"):
        v.check_int(True, "num_samples")
    with pytest.raises(ValueError, match=r"num_samples must be at least 1, got 0"):
        v.check_int(0, "num_samples", minimum=1)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_reduce_loss_matches_torch_weighted_mean(reduction: str) -> None:
    loss = torch.tensor([1.0, 2.0, 4.0])
    w = torch.tensor([1.0, 0.0, 3.0])
    want = {"none": loss * w, "sum": (loss * w).sum(), "mean": (loss * w).sum() / w.sum()}
    torch.testing.assert_close(v.reduce_loss(loss, reduction, w), want[reduction])
    plain = {"none": loss, "sum": loss.sum(), "mean": loss.mean()}
    torch.testing.assert_close(v.reduce_loss(loss, reduction), plain[reduction])


def test_reduce_loss_rejects_unknown_reduction() -> None:
    with pytest.raises(ValueError, match=r"reduction must be one of .* got 'avg'"):
        v.reduce_loss(torch.zeros(2), "avg")


# ------------------------------------------------------------------------------------------
# issue 17: half-precision reductions, the AMP head rule, meta and fake tensors
# ------------------------------------------------------------------------------------------


def test_weighted_mean_of_float16_losses_does_not_overflow() -> None:
    """The sum of 10,000 losses of 10 is 100,000 > 65,504: it must not reach float16."""
    loss = torch.full((10_000,), 10.0, dtype=torch.float16)
    out = v.reduce_loss(loss, "mean", torch.ones(10_000, dtype=torch.float16))
    assert out.dtype == torch.float16 and out.item() == 10.0
    assert v.reduce_loss(loss, "mean").item() == 10.0
    assert v.reduce_loss(loss, "none").dtype == torch.float16


def test_head_dtype_input_casts_lower_precision_features_up() -> None:
    from companion._numerics import head_dtype_input

    weight = torch.zeros(3, 4)
    same = torch.randn(2, 4)
    assert head_dtype_input(same, weight) is same
    for dtype in (torch.bfloat16, torch.float16):
        half = torch.randn(2, 4).to(dtype).requires_grad_(True)
        up = head_dtype_input(half, weight)
        assert up.dtype == torch.float32 and torch.equal(up, half.float())
        (g,) = torch.autograd.grad(up.sum(), half)
        assert g.dtype == dtype  # the gradient flows back in the features' dtype
    assert head_dtype_input(same, weight.double()).dtype == torch.float64
    with pytest.raises(TypeError, match=r"^features must have the same dtype as weight"):
        head_dtype_input(same.double(), weight)  # never cast the head down
    with pytest.raises(TypeError, match=r"^features must have the same dtype as weight"):
        head_dtype_input(same.half(), weight.bfloat16())  # neither holds the other
    with pytest.raises(ValueError, match=r"^features must be on the same device as weight"):
        head_dtype_input(same.to("meta"), weight)
    with pytest.raises(TypeError, match=r"^x must have the same dtype as w "):
        head_dtype_input(same.double(), weight, name="x", weight_name="w")


@pytest.mark.parametrize("where", ["meta", "fake"])
def test_value_checks_skip_meta_and_fake_tensors(where: str) -> None:
    """Meta and fake tensors hold no values: value checks are skipped, as under compile."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode

    import companion as cp

    device = "meta" if where == "meta" else "cpu"
    mode = FakeTensorMode() if where == "fake" else contextlib.nullcontext()
    assert v.value_checks_enabled()
    with mode:
        x = torch.randn(6, 4, device=device)
        y = torch.randn(6, 4, device=device)
        t = torch.randint(5, (6,), device=device)
        losses = [
            cp.cross_entropy(torch.randn(6, 5, device=device), t),
            cp.contrastive_loss(x, y, t > 2),
            cp.triplet_loss(x, y, x.flip(0)),
            cp.info_nce_loss(x, y),
            cp.supervised_contrastive_loss(x, t),
            cp.additive_angular_margin_loss(torch.rand(6, 5, device=device), t),
            cp.large_margin_softmax_loss(x @ y.T[:, :5], t, torch.rand(6, device=device)),
            cp.ArcFaceLoss(4, 5, device=device)(x, t),
            cp.ASoftmaxLoss(4, 5, device=device)(x, t),
            cp.LSoftmaxLoss(4, 5, device=device)(x, t),
        ]
        assert v.value_checks_enabled(x) is False
    for loss in losses:
        assert loss.shape == ()
        if where == "meta":
            assert loss.device.type == "meta"
    assert v.value_checks_enabled()
    assert v.value_checks_enabled(torch.zeros(1))
