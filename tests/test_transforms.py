"""Input transformations: shape/range/device kept, exact answers, generator determinism, BPDA."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from advlab import transforms as T
from advlab.errors import InputError, UnknownNameError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(n: int = 3, c: int = 1, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=_gen(seed))


FIXED = [T.Translate(2, -1), T.Rotate(20.0), T.Shear(0.3), T.Scale(1.2), T.Mirror(),
         T.GaussianBlur(1.0), T.Brightness(0.2), T.JPEG(50), T.BitDepth(3),
         T.MedianSmoothing(3)]
RANDOM = [T.Translate(max_shift=2), T.Translate(max_shift=1.5, integer=False),
          T.Rotate(max_angle=15), T.Shear(max_shear=0.2), T.Scale(scale_range=(0.8, 1.2)),
          T.Mirror(p=0.5), T.GaussianBlur(sigma_range=(0.5, 1.5)), T.GaussianNoise(0.2),
          T.Brightness(max_delta=0.3), T.JPEG(quality_range=(10, 90)),
          T.distribution(), T.distribution(mode="choice")]
ALL = FIXED + RANDOM


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("t", ALL, ids=lambda t: repr(t).split("(")[0])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_range_device_dtype_kept(t: T.Transform, c: int, device: str,
                                       dtype: torch.dtype) -> None:
    x = _x(c=c).to(device=device, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(1)
    for out in (t(x, g), t.bpda(x, g), t(x)):
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("t", RANDOM, ids=lambda t: repr(t).split("(")[0])
def test_random_draws_come_from_the_generator(t: T.Transform) -> None:
    x = _x(n=8)
    state = torch.get_rng_state()
    a, b, c = t(x, _gen(5)), t(x, _gen(5)), t(x, _gen(6))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # without a generator: the module's own stream; it moves on, and reset() replays it
    t.reset()
    s1, s2 = t(x), t(x)
    t.reset()
    assert torch.equal(t(x), s1) and not torch.equal(s1, s2)


@pytest.mark.parametrize("t", FIXED, ids=lambda t: repr(t).split("(")[0])
def test_fixed_ignores_generator(t: T.Transform) -> None:
    x = _x()
    assert not t.random
    assert torch.equal(t(x), t(x, _gen(3)))


def _roll_zero(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    r = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if dy > 0:
        r[:, :, :dy] = 0
    elif dy < 0:
        r[:, :, dy:] = 0
    if dx > 0:
        r[:, :, :, :dx] = 0
    elif dx < 0:
        r[:, :, :, dx:] = 0
    return r


@pytest.mark.parametrize("dx,dy", [(2, 0), (0, 3), (-1, 2), (3, -2), (0, 0), (-4, -4)])
def test_integer_translation_is_roll_with_zero_fill(dx: int, dy: int) -> None:
    x = _x(c=3)
    assert torch.equal(T.Translate(dx, dy)(x), _roll_zero(x, dx, dy))


def test_random_integer_translation_matches_roll_per_example() -> None:
    x = _x(n=16)
    t = T.Translate(max_shift=3)
    shifts = t.sample(x, _gen(2))
    out = t.apply(x, shifts)
    assert shifts.abs().max() <= 3 and len(shifts.unique()) > 3
    for i, (dx, dy) in enumerate(shifts.long().tolist()):
        assert torch.equal(out[i:i + 1], _roll_zero(x[i:i + 1], dx, dy))


def test_rotation_by_90_equals_rot90_and_mirror_is_flip() -> None:
    x = _x(h=9, w=9)
    torch.testing.assert_close(T.Rotate(90.0)(x), torch.rot90(x, 1, dims=(2, 3)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(T.Rotate(-90.0)(x), torch.rot90(x, -1, dims=(2, 3)),
                               atol=1e-5, rtol=0)
    assert torch.equal(T.Mirror()(x), x.flip(-1))
    for identity in (T.Rotate(0.0), T.Shear(0.0), T.Scale(1.0), T.Brightness(0.0)):
        torch.testing.assert_close(identity(x), x, atol=1e-6, rtol=0)


def test_shear_reads_the_sheared_pixel() -> None:
    # shear s = 1 on a 5 x 5 image: output (u, v) reads input (u + v, v), v = row - 2
    x = _x(h=5, w=5)
    out = T.Shear(1.0)(x)
    ref = torch.zeros_like(x)
    for r in range(5):
        ref[:, :, r] = _roll_zero(x[:, :, r:r + 1], -(r - 2), 0)[:, :, 0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_bit_depth_exact_values() -> None:
    x = torch.tensor([0.0, 0.1, 0.16, 0.17, 0.49, 0.51, 0.8, 1.0]).view(1, 1, 2, 4)
    np.testing.assert_array_equal(T.BitDepth(1)(x).flatten().numpy(),
                                  [0, 0, 0, 0, 0, 1, 1, 1])
    out = T.BitDepth(2)(x).flatten().numpy()
    np.testing.assert_allclose(out, np.round(x.flatten().numpy() * 3) / 3, rtol=0, atol=0)
    assert set(np.round(out * 3).tolist()) <= {0.0, 1.0, 2.0, 3.0}
    x8 = torch.arange(256, dtype=torch.float64).view(1, 1, 16, 16) / 255
    assert torch.equal(T.BitDepth(8)(x8), x8)


def test_median_matches_numpy() -> None:
    x = _x(n=2, c=2, h=7, w=6)
    out = T.MedianSmoothing(3)(x).numpy()
    p = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    ref = np.empty_like(out)
    for i in range(7):
        for j in range(6):
            ref[:, :, i, j] = np.median(p[:, :, i:i + 3, j:j + 3].reshape(2, 2, 9), axis=-1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=0)


def test_blur_kernel_sums_to_one_and_matches_conv() -> None:
    blur = T.GaussianBlur(1.2)
    k = blur.kernel()
    assert k.shape == (9, 9)
    assert abs(k.sum().item() - 1.0) < 1e-12
    torch.testing.assert_close(k, k.T)
    x = _x(n=2, h=16, w=16).double()
    ref = torch.nn.functional.conv2d(x, k[None, None])  # valid part: no border effects
    torch.testing.assert_close(blur(x)[:, :, 4:-4, 4:-4], ref, atol=1e-12, rtol=0)
    const = torch.full((1, 1, 8, 8), 0.37)
    torch.testing.assert_close(blur(const), const)


def test_noise_statistics() -> None:
    x = torch.full((4, 1, 64, 64), 0.5, dtype=torch.float64)
    z = T.GaussianNoise(0.05)(x, _gen(0)) - x
    assert abs(z.mean().item()) < 2e-3 and abs(z.std().item() - 0.05) < 2e-3


def test_jpeg_close_to_libjpeg() -> None:
    image = pytest.importorskip("PIL.Image")
    x = torch.nn.functional.interpolate(torch.rand(1, 1, 7, 7, generator=_gen(0)),
                                        size=(32, 32), mode="bilinear")
    arr = (x[0, 0].numpy() * 255).round().astype(np.uint8)
    x8 = torch.tensor(arr, dtype=torch.float32)[None, None] / 255
    for q in (30, 75):
        buf = io.BytesIO()
        image.fromarray(arr, "L").save(buf, format="JPEG", quality=q)
        ref = torch.tensor(np.array(image.open(io.BytesIO(buf.getvalue()))),
                           dtype=torch.float32) / 255
        ours = T.JPEG(q)(x8)[0, 0]
        distortion = (ref - x8[0, 0]).abs().max().item()
        assert (ours - ref).abs().max().item() <= 5 / 255 < distortion


def test_jpeg_quality_100_is_nearly_identity_and_low_quality_is_not() -> None:
    x = _x(c=3, h=16, w=16)
    assert (T.JPEG(100)(x) - x).abs().max() < 0.02
    assert (T.JPEG(10)(x) - x).abs().mean() > 0.05


@pytest.mark.parametrize("t", [T.BitDepth(3), T.MedianSmoothing(3), T.JPEG(40),
                               T.JPEG(quality_range=(20, 60))],
                         ids=["bitdepth", "median", "jpeg", "jpeg-random"])
def test_bpda_identity_gradient(t: T.Transform) -> None:
    assert t.differentiable is False
    x = _x(c=1, h=16, w=16).double().requires_grad_(True)
    w = torch.randn(x.shape, generator=_gen(1), dtype=torch.float64)
    out = t.bpda(x, _gen(4))
    (grad,) = torch.autograd.grad((w * out).sum(), x)
    assert torch.equal(grad, w)  # d identity = I
    assert torch.equal(out.detach(), t(x.detach(), _gen(4)))  # the value is exact


def test_bpda_cubic_jpeg_gradient_is_the_surrogates() -> None:
    t = T.JPEG(50, surrogate="cubic")
    x = _x(c=3, h=8, w=8).double().requires_grad_(True)
    w = torch.randn(x.shape, generator=_gen(1), dtype=torch.float64)
    (g_bpda,) = torch.autograd.grad((w * t.bpda(x)).sum(), x)
    q = t.fixed_params(x)
    (g_sur,) = torch.autograd.grad((w * t.surrogate(x, q)).sum(), x)
    torch.testing.assert_close(g_bpda, g_sur)
    assert not torch.allclose(g_bpda, w)  # not the identity
    # the true map's gradient is zero where rounding is exact: why BPDA is needed
    (g_true,) = torch.autograd.grad((w * t(x)).sum(), x)
    assert g_true.abs().max() == 0


def test_differentiable_transforms_have_autograd_gradients() -> None:
    x = _x(n=2, h=6, w=6).double().requires_grad_(True)
    for t in (T.Rotate(17.0), T.Shear(0.13), T.Scale(1.1), T.GaussianBlur(0.8)):
        assert t.differentiable
        assert torch.autograd.gradcheck(lambda z, t=t: t(z), (x,))
        assert torch.equal(t.bpda(x), t(x))


def test_combinators() -> None:
    x = _x(n=10)
    first = T.Translate(1, 0)
    pick = T.RandomChoice([first, T.Mirror()], p=[1.0, 0.0])
    assert torch.equal(pick(x, _gen(0)), first(x))
    both = T.Compose([T.Translate(1, 0), T.Mirror()])
    assert torch.equal(both(x), T.Mirror()(T.Translate(1, 0)(x)))
    assert not both.random and both.differentiable
    assert not T.Compose([T.BitDepth(2), T.Mirror()]).differentiable
    lecture = T.distribution()
    names = [type(t).__name__ for t in lecture.transforms]
    assert names == ["Translate", "Rotate", "Mirror", "Shear", "GaussianBlur", "GaussianNoise"]
    d = T.distribution({"translate": 2, "rotate": {"max_angle": 5.0}}, mode="choice")
    assert isinstance(d, T.RandomChoice) and d.transforms[0].max_shift == 2
    assert d.transforms[1].max_angle == 5.0
    choice = T.RandomChoice([T.Translate(2, 0), T.Translate(-2, 0)])
    which = choice.choose(x, _gen(3))
    out = choice(x, _gen(3))
    for i in range(len(x)):
        shift = 2 if which[i] == 0 else -2
        assert torch.equal(out[i:i + 1], _roll_zero(x[i:i + 1], shift, 0))


def test_usable_in_sequential_and_bpda_module() -> None:
    x = _x(n=4)
    seq = nn.Sequential(T.BPDA(T.BitDepth(2)), T.Translate(1, 1))
    out = seq(x.requires_grad_(True))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(out, T.Translate(1, 1)(T.BitDepth(2)(x)))
    assert torch.equal(grad, T.Translate(-1, -1)(torch.ones_like(x)))


def test_bad_inputs() -> None:
    with pytest.raises(InputError):
        T.Translate(1.5, 0)
    with pytest.raises(InputError):
        T.BitDepth(0)
    with pytest.raises(InputError):
        T.MedianSmoothing(2)
    with pytest.raises(InputError):
        T.JPEG(0)
    with pytest.raises(InputError):
        T.Mirror(p=1.5)
    with pytest.raises(InputError):
        T.Rotate(30.0)(torch.rand(3, 8, 8))
    with pytest.raises(UnknownNameError):
        T.build("swirl")
    with pytest.raises(UnknownNameError):
        T.distribution(["translate", "swirl"])
