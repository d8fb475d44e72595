"""ADA augmentation (memjax/train/augment.py) against numpy, scipy and closed forms.

The general geometric path is checked twice: against a float64 numpy/scipy transcription of the
reference's resampling (written from the reference's own route: dynamic reflect margin,
`upfirdn2d`, `affine_grid` + `grid_sample` in normalized coordinates, down-sampling), and against
the exact continuous transform of a smooth analytic image. Blits are checked against numpy's
flip, rot90 and reflect padding exactly.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
import scipy.signal
import scipy.stats

from memjax.train import augment as augment_lib

AugmentOptions = augment_lib.AugmentOptions
_augment = jax.jit(augment_lib.augment, static_argnames="options")
_sample_params = jax.jit(augment_lib.sample_params, static_argnums=(2, 3, 4, 5))

# sym6 low-pass taps (PyWavelets' dec_lo reversed, as the reference lists them).
SYM6 = np.array([0.015404109327027373, 0.0034907120842174702, -0.11799011114819057,
                 -0.048311742585633, 0.4910559419267466, 0.787641141030194, 0.3379294217276218,
                 -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
                 0.0017677118642428036, -0.007800708325034148])
SYM6 = SYM6 / SYM6.sum()


def only(*names, **strengths):
  """Options with every multiplier 0 except `names` (at 1)."""
  fields = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
            "contrast")
  return AugmentOptions(**{f: float(f in names) for f in fields}, **strengths)


def images_like(rng, shape):
  return rng.uniform(-1, 1, shape).astype(np.float32)


def binomial_tolerance(prob, n, sigmas=4.5):
  return sigmas * math.sqrt(prob * (1 - prob) / n)


# ----------------------------------------------------------------------------------------------
# A float64 transcription of the reference's resampling, for one (H, W, C) image.


def _translate(tx, ty):
  return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def _scale(sx, sy):
  return np.diag([sx, sy, 1.0])


def reference_resample(image, g_inv):
  """Pads by the corner-sized margin, up-samples, grid-samples, down-samples, crops (float64)."""
  h, w, _ = image.shape
  hz_pad = SYM6.size // 4
  cx, cy = (w - 1) / 2, (h - 1) / 2
  corners = g_inv @ np.array([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]]).T
  margin = np.concatenate([-corners[:2], corners[:2]]).max(axis=1)  # x0, y0, x1, y1
  margin = margin + np.array([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2)
  margin = np.minimum(np.maximum(margin, 0), [w - 1, h - 1] * 2)
  mx0, my0, mx1, my1 = np.ceil(margin).astype(int)
  x = np.pad(image.astype(np.float64), ((my0, my1), (mx0, mx1), (0, 0)), mode="reflect")
  g = _translate((mx0 - mx1) / 2, (my0 - my1) / 2) @ g_inv

  # upsample2d: zero insertion, 12-tap filter with gain 2 per axis, padding (6, 5).
  for axis in (1, 0):
    length = x.shape[axis]
    full = scipy.signal.upfirdn(2 * SYM6, x, up=2, axis=axis)
    x = np.take(full, np.arange(5, 5 + 2 * length), axis=axis)
  g = _scale(2, 2) @ g @ _scale(0.5, 0.5)
  g = _translate(-0.5, -0.5) @ g @ _translate(0.5, 0.5)

  # affine_grid + grid_sample (bilinear, zeros, align_corners=False) in normalized coordinates.
  in_h, in_w = x.shape[:2]
  out_h, out_w = 2 * (h + 2 * hz_pad), 2 * (w + 2 * hz_pad)
  theta = _scale(2 / in_w, 2 / in_h) @ g @ _scale(out_w / 2, out_h / 2)
  yn, xn = np.meshgrid((2 * np.arange(out_h) + 1) / out_h - 1,
                       (2 * np.arange(out_w) + 1) / out_w - 1, indexing="ij")
  gx = theta[0, 0] * xn + theta[0, 1] * yn + theta[0, 2]
  gy = theta[1, 0] * xn + theta[1, 1] * yn + theta[1, 2]
  px, py = ((gx + 1) * in_w - 1) / 2, ((gy + 1) * in_h - 1) / 2
  x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
  sampled = np.zeros((out_h, out_w, x.shape[2]))
  for dy in (0, 1):
    for dx in (0, 1):
      weight = (1 - np.abs(px - (x0 + dx))) * (1 - np.abs(py - (y0 + dy)))
      rows, cols = y0 + dy, x0 + dx
      inside = (rows >= 0) & (rows < in_h) & (cols >= 0) & (cols < in_w)
      pixels = x[np.clip(rows, 0, in_h - 1), np.clip(cols, 0, in_w - 1)]
      sampled += np.where(inside, weight, 0)[..., None] * pixels

  # downsample2d with padding -2 * hz_pad and flip_filter=True: out[n] = sum_t f[t] v[2n + 1 + t].
  for axis, length in ((0, h), (1, w)):
    windows = np.lib.stride_tricks.sliding_window_view(
        np.take(sampled, np.arange(1, 1 + 2 * length + SYM6.size - 2), axis=axis), SYM6.size,
        axis=axis)
    sampled = np.take(windows @ SYM6, np.arange(0, 2 * length, 2), axis=axis)
  return sampled


# ----------------------------------------------------------------------------------------------


_TRACES = []


@jax.jit
def _augment_default(images, key, p):
  """`augment` with the default (bgc) options, counting its traces."""
  _TRACES.append(None)
  return augment_lib.augment(images, key, p)


def test_p0_returns_the_input_bit_for_bit_and_p_does_not_recompile(rng):
  x = images_like(rng, (8, 16, 16, 5))
  x[0, 0, 0, :] = -0.0  # x + 0.0 would turn these into +0.0.
  key = jax.random.key(0)
  out = np.asarray(_augment_default(x, key, jnp.float32(0.0)))
  np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))
  traces = len(_TRACES)
  changed = np.asarray(_augment_default(x, key, jnp.float32(0.9)))
  assert (changed != x).any(axis=(1, 2, 3)).sum() >= 6
  assert len(_TRACES) == traces


def test_blits_equal_numpy_flip_rot90_and_reflect_padded_shifts(rng):
  """Each output is exactly one of the numpy candidates, and several candidates occur."""
  x = images_like(rng, (24, 12, 12, 1))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  shifts = [(tx, ty) for tx in range(-2, 3) for ty in range(-2, 3)]  # |t| <= round(0.125 * 12)
  candidates = {
      "xflip": [x, x[:, :, ::-1]],
      "rotate90": [np.rot90(x, k, axes=(1, 2)) for k in range(4)],
      # Content moves by (tx, ty); the uncovered border is reflected.
      "xint": [padded[:, 2 - ty:14 - ty, 2 - tx:14 - tx] for tx, ty in shifts],
  }
  for name, expected in candidates.items():
    out = np.asarray(_augment(x, jax.random.key(1), 1.0, only(name)))
    matches = np.stack([(out == e).all(axis=(1, 2, 3)) for e in expected], axis=1)
    assert (matches.sum(axis=1) == 1).all(), name
    assert len(set(matches.argmax(axis=1))) >= (2 if name == "xflip" else 3), name


def test_rotation_and_scale_match_float64_references(rng):
  """Similarities at p = 1 against the reference's route in float64 and the exact transform.

  Against the float64 transcription the only differences are float32 rounding (coordinates of
  up to 6W pixels carry ~1e-5 px error; ~100 weighted terms per output) and the static margin,
  which is larger than the reference's and so changes nothing here: 1e-4 on noise in [-1, 1].
  Against the continuous image, the error is that of bilinear interpolation on the 2x grid
  (spacing h = 1/2 pixel), at most h^2/8 * (|f_xx| + |f_yy|) per sample, carried through the
  down-sampling filter (gain at most sum|f|); the filters' pass-band error at these
  frequencies (< 0.07 cycles/pixel) is far below that. The reference's transforms turn about a
  point 0.05 pixels off the image centre (its filter delay), which the expectation includes.
  """
  n, h, w, c = 6, 40, 40, 2
  options = only("scale", "rotate")
  key = jax.random.key(2)
  g_inv = np.asarray(_sample_params(key, 1.0, n, h, w, options).g_inv, np.float64)
  assert np.all(np.abs(np.linalg.det(g_inv[:, :2, :2]) - 1) > 1e-3)  # Every image scaled,
  assert np.all(np.abs(g_inv[:, 0, 1]) > 1e-3)  # and rotated.

  noise = images_like(rng, (n, h, w, c))
  out = np.asarray(_augment(noise, key, 1.0, options))
  for image, result, g in zip(noise, out, g_inv):
    np.testing.assert_allclose(result, reference_resample(image, g), atol=1e-4, rtol=0)

  waves = [(0.5, (0.04, 0.025), 0.3), (0.3, (-0.03, 0.05), 1.1)]  # (amplitude, cycles/px, phase)

  def smooth(col, row, channel):
    return sum(a * np.cos(2 * np.pi * (k[0] * col + k[1] * row) + phi + channel)
               for a, k, phi in waves)

  rows, cols = np.mgrid[:h, :w].astype(np.float64)
  image = np.stack([smooth(cols, rows, ch) for ch in range(c)], axis=-1)
  out = np.asarray(_augment(np.broadcast_to(image, (n, h, w, c)).astype(np.float32), key, 1.0,
                            options))
  curvature = sum(a * (2 * np.pi) ** 2 * (k[0] ** 2 + k[1] ** 2) for a, k, _ in waves)
  tolerance = 0.5 ** 2 / 8 * curvature * np.abs(SYM6).sum() ** 2
  border = 9  # Filter reach (3 + 3 pixels, stretched by the zoom) from the reflected border.
  # The route's filters delay by their centre of mass c (5.098 for sym6) where its half-pixel
  # bookkeeping assumes 5, so a matrix g acts about a point (c - 5) / 2 pixels off the centre.
  delay = (np.arange(SYM6.size) @ SYM6 - 5) / 2
  for result, g in zip(out, g_inv):
    shift = (g[:2, :2] - np.eye(2)) @ [delay, delay] + g[:2, 2]
    u, v = cols - (w - 1) / 2, rows - (h - 1) / 2
    src_x = g[0, 0] * u + g[0, 1] * v + shift[0] + (w - 1) / 2
    src_y = g[1, 0] * u + g[1, 1] * v + shift[1] + (h - 1) / 2
    interior = ((src_x >= border) & (src_x <= w - 1 - border) & (src_y >= border)
                & (src_y <= h - 1 - border))
    assert interior.sum() > 100
    expected = np.stack([smooth(src_x, src_y, ch) for ch in range(c)], axis=-1)
    error = np.abs(result - expected)[interior]
    assert error.max() < tolerance, (error.max(), tolerance)


def test_brightness_and_contrast_follow_the_closed_form(rng):
  """Per image out = c * (x + b), b ~ N(0, 0.2^2), log2 c ~ N(0, 0.5^2), each firing w.p. p."""
  n, p = 2000, 0.5
  x = images_like(rng, (n, 2, 2, 4))
  out = np.asarray(_augment(x, jax.random.key(3), p, only("brightness", "contrast")),
                   np.float64)
  xs = x.reshape(n, -1).astype(np.float64)
  ys = out.reshape(n, -1)
  slope = ((xs - xs.mean(1, keepdims=True)) * (ys - ys.mean(1, keepdims=True))).sum(1) / (
      (xs - xs.mean(1, keepdims=True)) ** 2).sum(1)
  intercept = ys.mean(1) - slope * xs.mean(1)
  np.testing.assert_allclose(ys, slope[:, None] * xs + intercept[:, None], atol=1e-5)
  brightness = intercept / slope

  untouched = (ys == xs).all(axis=1)
  scaled = np.abs(slope - 1) > 1e-6
  shifted = np.abs(brightness) > 1e-6
  assert (untouched == ~(scaled | shifted)).all()
  for fraction, prob in ((untouched.mean(), (1 - p) ** 2), (scaled.mean(), p),
                         (shifted.mean(), p)):
    assert abs(fraction - prob) < binomial_tolerance(prob, n), (fraction, prob)
  # Kolmogorov-Smirnov against the stated distributions, on the images where each fired.
  assert scipy.stats.kstest(brightness[shifted], "norm", args=(0, 0.2)).pvalue > 1e-3
  assert scipy.stats.kstest(np.log2(slope[scaled]), "norm", args=(0, 0.5)).pvalue > 1e-3


def test_fraction_of_changed_images_matches_the_probability(rng):
  """xflip changes an image w.p. p/2 (a fair coin after firing); rotation w.p. p overall."""
  n, p = 1500, 0.3
  x = images_like(rng, (n, 4, 4, 1))
  for options, prob in ((only("xflip"), p / 2), (only("rotate"), p)):
    out = np.asarray(_augment(x, jax.random.key(4), jnp.float32(p), options))
    changed = (out != x).any(axis=(1, 2, 3)).mean()
    assert abs(changed - prob) < binomial_tolerance(prob, n), (options, changed, prob)


def test_gradient_is_the_adjoint_of_the_augmentation(rng):
  """For a fixed key the augmentation is affine in x: grad <w, A x + a> = A^T w, so
  <grad, x> = <w, aug(x) - aug(0)>, and the gradient is finite and non-zero."""
  x = jnp.asarray(images_like(rng, (4, 16, 16, 5)))
  weights = jnp.asarray(images_like(rng, x.shape))
  key, p = jax.random.key(5), jnp.float32(0.9)

  def loss(images):
    return jnp.sum(weights * augment_lib.augment(images, key, p))

  value_and_grad = jax.jit(jax.value_and_grad(loss))
  value, grad = value_and_grad(x)
  grad = np.asarray(grad, np.float64)
  assert np.isfinite(grad).all()
  assert (np.abs(grad).sum(axis=(1, 2, 3)) > 0).all()
  assert not np.allclose(grad, np.asarray(weights))  # Some image was transformed.
  lhs = float(np.sum(grad * np.asarray(x, np.float64)))
  rhs = float(value - value_and_grad(jnp.zeros_like(x))[0])
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_sharded_batch_gives_the_unsharded_result(rng):
  x = images_like(rng, (8, 16, 16, 5))
  key, p = jax.random.key(6), jnp.float32(0.8)
  mesh = jax.make_mesh((4,), ("data",))
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
  out = _augment_default(sharded, key, p)
  assert len(out.sharding.device_set) == 4
  single = _augment_default(x, key, p)  # Uncommitted: one device.
  assert (np.asarray(single) != x).any()
  np.testing.assert_array_equal(np.asarray(out), np.asarray(single))


def test_options_presets_and_input_checks():
  assert AugmentOptions() == AugmentOptions.preset("bgc")
  bg = AugmentOptions.preset("bg", scale_std=0.3)
  assert (bg.brightness, bg.contrast, bg.xflip, bg.scale_std) == (0.0, 0.0, 1.0, 0.3)
  for bad in (np.zeros((2, 1, 8, 1), np.float32), np.zeros((8, 8, 1), np.float32),
              np.zeros((2, 8, 8, 1), np.int32)):
    try:
      augment_lib.augment(bad, jax.random.key(0), 0.5)
    except ValueError:
      continue
    raise AssertionError(f"accepted {bad.shape} {bad.dtype}")
