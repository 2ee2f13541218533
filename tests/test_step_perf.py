"""The training step's lean parts give the results of the plain ones: the loss kept on the device,
multi-tensor EMA, multi-tensor and fused AdamW, the fused squeeze-excitation backward and the
one-pass residual with stochastic depth."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from asca_core.errors import AscaError
from asca_core.models import blocks, build_model
from asca_core.train.engine import Trainer
from asca_core.train.optim import (
    ModelEma,
    adamw_implementation,
    build_adamw,
    param_groups,
    set_adamw_implementation,
)


# ------------------------------------------------------------------------------ EMA and AdamW
def _net() -> nn.Module:
    torch.manual_seed(0)
    # no conv bias before the norm: its gradient is rounding noise, which Adam scales to full steps
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.GELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def _reference_ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def _train_steps(model, optimizer, steps=5, ema=None, reference=None):
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        x = torch.randn(6, 1, 8, 8, generator=gen)
        y = torch.randint(0, 3, (6,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        if reference is not None:
            _reference_ema_update(reference, model, 0.99, step)


def test_multi_tensor_ema_matches_the_per_tensor_update():
    model = _net().train()
    ema = ModelEma(model, 0.99)
    reference = copy.deepcopy(model).eval()
    _train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), ema=ema, reference=reference)
    for a, b in zip(ema.module.state_dict().values(), reference.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), atol=1e-6, rtol=0)
    assert int(ema.module[1].num_batches_tracked) == 5  # buffers copied, integer ones too
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)


def test_ema_fallback_without_lerp_matches(monkeypatch):
    model = _net().train()
    ema = ModelEma(model, 0.99)
    reference = copy.deepcopy(model).eval()
    monkeypatch.delattr(torch, "_foreach_lerp_")
    _train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), ema=ema, reference=reference)
    for a, b in zip(ema.module.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("flags", [{"foreach": True}, {"fused": True}])
def test_multi_tensor_and_fused_adamw_match_the_loop(flags):
    plain_model, fast_model = _net().train(), _net().train()
    plain = torch.optim.AdamW(param_groups(plain_model, 0.05), lr=1e-2, foreach=False)
    try:
        fast = torch.optim.AdamW(param_groups(fast_model, 0.05), lr=1e-2, **flags)
        _train_steps(fast_model, fast)
    except RuntimeError as exc:  # a torch without this kernel on the CPU
        pytest.skip(f"AdamW {flags} not available here: {exc}")
    _train_steps(plain_model, plain)
    for a, b in zip(plain_model.state_dict().values(), fast_model.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), atol=1e-6, rtol=1e-5)


def test_build_adamw_picks_the_kernel_per_device():
    assert adamw_implementation("cpu") == {"fused": False, "foreach": True}
    assert adamw_implementation(torch.device("cuda", 0)) == {"fused": True, "foreach": False}
    optimizer = build_adamw(_net(), lr=1e-3, weight_decay=0.05)
    assert all(g["foreach"] and not g["fused"] for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    for group in optimizer.param_groups:  # as a state dict written on a CUDA machine leaves them
        group.update(fused=True, foreach=False)
    set_adamw_implementation(optimizer, "cpu")
    assert all(g["foreach"] and not g["fused"] for g in optimizer.param_groups)


# ------------------------------------------------------------------------------ loss on the device
def _loss_keeper() -> Trainer:
    trainer = Trainer.__new__(Trainer)  # only the loss bookkeeping is exercised
    trainer.device = torch.device("cpu")
    trainer.epoch, trainer.step = 2, 0
    trainer._loss_stats, trainer._loss_start = None, 0.0
    return trainer


def test_loss_sum_accumulates_on_the_device_and_reads_as_a_float():
    trainer = _loss_keeper()
    trainer.loss_sum = 1.5  # as a resume restores it
    losses = [0.7, 0.6, 0.25]
    for value in losses:
        trainer._add_loss(torch.tensor(value), 8)
        trainer.step += 1
    assert trainer._loss_stats is not None and trainer._loss_stats.device.type == "cpu"
    expected = 1.5 + sum(float(torch.tensor(v)) * 8 for v in losses)
    assert isinstance(trainer.loss_sum, float) and trainer.loss_sum == pytest.approx(expected, abs=1e-12)
    trainer.loss_sum = 0.0
    assert trainer.loss_sum == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_is_reported_with_its_step_when_read(bad):
    trainer = _loss_keeper()
    for value in (0.5, bad, 0.4, math.nan):
        trainer._add_loss(torch.tensor(value), 4)
        trainer.step += 1
    with pytest.raises(AscaError) as info:
        _ = trainer.loss_sum
    assert f"training loss became {bad} at epoch 3, step 1;" in str(info.value)


# ------------------------------------------------------------------------------ fused blocks
def _se_grads(se, x, fused, monkeypatch):
    monkeypatch.setattr(blocks, "_can_fuse", lambda _x: fused)
    se.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = se(x)
    assert ("_SqueezeExciteFn" in type(out.grad_fn).__name__) == fused
    weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)  # a gradient that is not uniform
    (out * weight).sum().backward()
    return out.detach(), [x.grad] + [p.grad for p in se.parameters()]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fused_squeeze_excite_gives_the_plain_values_and_gradients(memory_format, monkeypatch):
    torch.manual_seed(0)
    se = blocks.SqueezeExcite(24, 6).to(memory_format=memory_format)
    x = (torch.randn(3, 24, 5, 7) * 2 + 0.5).contiguous(memory_format=memory_format)
    out_plain, plain = _se_grads(se, x, False, monkeypatch)
    out_fused, fused = _se_grads(se, x, True, monkeypatch)
    assert torch.equal(out_plain, out_fused)
    for a, b in zip(plain, fused, strict=True):
        assert a is not None and b is not None and a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (a - b).abs().max()
    assert fused[0].is_contiguous(memory_format=memory_format)


def test_fused_squeeze_excite_with_a_frozen_gate_trains_only_the_map(monkeypatch):
    torch.manual_seed(0)
    se = blocks.SqueezeExcite(8, 2)
    for p in se.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 8, 4, 4)
    _, plain = _se_grads(se, x, False, monkeypatch)
    _, fused = _se_grads(se, x, True, monkeypatch)
    assert all(g is None for g in fused[1:])
    assert torch.allclose(plain[0], fused[0], atol=1e-6, rtol=1e-5)


def test_fused_squeeze_excite_is_used_only_where_a_gradient_flows():
    se = blocks.SqueezeExcite(8, 2)
    x = torch.randn(2, 8, 4, 4)
    assert type(se(x).grad_fn).__name__ != "_SqueezeExciteFnBackward"  # no input gradient: plain
    with torch.no_grad():
        assert se(x.requires_grad_()).grad_fn is None
    assert "_SqueezeExciteFn" in type(se(x).grad_fn).__name__


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_model_gradients_with_fused_blocks_equal_the_plain_ones(memory_format, monkeypatch):
    """The whole of asca_tiny, stochastic depth on (same seed, so the same dropped branches);
    channels_last also takes the gated projection."""
    torch.manual_seed(0)
    reference = build_model("asca_tiny", 5, drop_path=0.2).train().to(memory_format=memory_format)
    x = torch.randn(4, 1, 64, 96).contiguous(memory_format=memory_format)
    y = torch.tensor([0, 1, 2, 3])

    def grads(fused: bool):
        monkeypatch.setattr(blocks, "_can_fuse", (lambda _x: torch.is_grad_enabled()) if fused else (lambda _x: False))
        model = copy.deepcopy(reference)
        torch.manual_seed(1)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    loss_plain, plain = grads(False)
    loss_fused, fused = grads(True)
    assert torch.allclose(loss_plain, loss_fused, atol=1e-6, rtol=0)
    for name, a in plain.items():
        b = fused[name]
        scale = max(float(a.abs().max()), 1e-3)  # pre-norm biases have (rounding-noise) zero gradients
        assert float((a - b).abs().max()) <= 1e-4 * scale, name


@pytest.mark.parametrize("bias", [True, False])
def test_gated_projection_gives_the_values_and_gradients_of_se_then_conv(bias):
    torch.manual_seed(0)
    se, proj = blocks.SqueezeExcite(24, 6), nn.Conv2d(24, 10, 1, bias=bias)
    x0 = (torch.randn(3, 24, 5, 7) + 0.3).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(3, 10, 5, 7)

    def run(fused: bool):
        for m in (se, proj):
            m.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        if fused:
            assert blocks._fits_gated_projection(x, proj.weight)
            out = blocks._GatedProjectionFn.apply(x, se, proj.weight, proj.bias, *se.parameters())
            assert out.is_contiguous(memory_format=torch.channels_last)
        else:
            out = proj(x * se.gate(x.mean((2, 3), keepdim=True)))
        (out * weight).sum().backward()
        return out.detach(), [x.grad, proj.weight.grad, proj.bias.grad if bias else None] + [
            p.grad for p in se.parameters()
        ]

    out_plain, plain = run(False)
    out_fused, fused = run(True)
    torch.testing.assert_close(out_fused, out_plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(plain, fused, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_gated_projection_is_left_to_the_plain_path_where_it_does_not_apply():
    weight = torch.zeros(4, 8, 1, 1)
    cl = torch.randn(2, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    assert blocks._fits_gated_projection(cl, weight)
    assert not blocks._fits_gated_projection(torch.randn(2, 8, 3, 3), weight)  # NCHW: rows would be a copy
    assert not blocks._fits_gated_projection(cl.to(torch.bfloat16), weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not blocks._fits_gated_projection(cl, weight)


def test_drop_path_add_to_is_the_residual_sum_with_the_same_dropped_rows():
    drop = blocks.DropPath(0.5).train()
    shortcut, x = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    torch.manual_seed(3)
    expected = shortcut + drop(x)
    torch.manual_seed(3)
    got = drop.add_to(shortcut, x)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    kept = [(got[i] - shortcut[i]).abs().sum() > 0 for i in range(8)]
    assert 0 < sum(kept) < 8  # some rows dropped, some kept (seeded)
    assert torch.equal(drop.eval().add_to(shortcut, x), shortcut + x)
