"""Adaptive discriminator augmentation (ADA) of StyleGAN2-ADA, in pure JAX.

Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data", and NVlabs
stylegan2-ada-pytorch `training/augment.py` (`AugmentPipe`), whose semantics this follows. The
discriminator sees reals and fakes through `augment`; each transform fires per image with
probability `p * multiplier`, and `p` is a traced scalar that the trainer adapts without
recompiling. Everything is linear in the images, so the generator's gradient flows through.

Implemented: the 'bgc' preset less its RGB-only parts, for images in [-1, 1], channels last
(N, H, W, C), any C:
* pixel blitting: xflip, rotate90, xint (integer translation);
* general geometry: scale (isotropic), rotate (before and after aniso, each with probability
  1 - sqrt(1 - rotate * p), so that one or both fire with probability rotate * p), aniso,
  xfrac (fractional translation);
* colour: brightness (an offset added to every channel) and contrast (a gain about 0).
Left out: lumaflip, hue and saturation, which are defined on the RGB luma axis (for one channel
the reference's lumaflip negates the image), and the non-bgc imgfilter, noise and cutout.

As in the reference, the geometric transforms of one image compose into one 3x3 inverse matrix
that maps output pixels to input pixels, and the image is resampled once: reflect padding,
2x up-sampling with the sym6 wavelet filter, bilinear sampling (zeros outside,
align_corners=False), 2x down-sampling and a crop. Differences, for static shapes and exactness:
* Padding is static, (H - 1, W - 1) on each side: the largest margin the reference ever uses
  (it sizes the margin from the batch's transformed corners and clamps it there). Inside the
  reference's margin the padded images agree; they differ only where the reference's filter
  tails reach past its margin (zeros there, reflections here), at the border of strongly
  zoomed-out images. The cost is a (6H - 4, 6W - 4) up-sampled image per image and channel.
* Images whose only geometric transforms are blits (flip, 90 degree turns, integer shifts) are
  moved exactly, by gathering pixels with reflected indices, so they equal numpy's flips, rot90
  and reflect-padded shifts. The reference resamples them too, and its asymmetric sym6 filter
  blurs a flipped or turned image slightly. Images that no transform touched come back
  bit-identical by construction (an identity gather, a select), and the resampling runs under
  `lax.cond` only when some image of the batch needs it.
Kept from the reference for fidelity: its half-pixel bookkeeping assumes a filter delay of 5 taps
where sym6's is 5.098, so general transforms turn about a point 0.05 pixels off the centre.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

# Low-pass filter of the sym6 wavelet (the reference's `wavelets['sym6']`), normalized to unit DC
# gain. It is orthogonal: its even-lag autocorrelation is 1/2 at lag 0 and 0 elsewhere, so
# up-sampling and then down-sampling with it gives the image back.
_SYM6_WAVELET = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)
_SYM6 = tuple(tap / math.fsum(_SYM6_WAVELET) for tap in _SYM6_WAVELET)
# Output margin of the high-resolution sampling grid, in low-resolution pixels (taps // 4).
_FILTER_PAD = len(_SYM6) // 4

# The random draws, a row each of one uniform and one normal array.
_UNIFORMS = ("xflip_fire", "xflip", "rotate90_fire", "rotate90", "xint_fire", "xint_x", "xint_y",
             "scale_fire", "rotate_pre_fire", "rotate_pre", "aniso_fire", "rotate_post_fire",
             "rotate_post", "xfrac_fire", "brightness_fire", "contrast_fire")
_NORMALS = ("scale", "aniso", "xfrac_x", "xfrac_y", "brightness", "contrast")

_PRESETS = {
    "blit": ("xflip", "rotate90", "xint"),
    "geom": ("scale", "rotate", "aniso", "xfrac"),
    "color": ("brightness", "contrast"),
    "bg": ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac"),
    "bgc": ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
            "contrast"),
}


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """Probability multipliers and strengths; the defaults are StyleGAN2-ADA's 'bgc' preset.

  A transform fires per image with probability `p * multiplier` (0 disables it at trace time).
  Strengths are the reference's defaults. Frozen and hashable, so it can be a static argument.
  """
  xflip: float = 1.0  # Horizontal flip (then a fair coin picks flip or not).
  rotate90: float = 1.0  # Rotation by a uniform multiple of 90 degrees.
  xint: float = 1.0  # Integer translation.
  scale: float = 1.0  # Isotropic scaling.
  rotate: float = 1.0  # Arbitrary rotation.
  aniso: float = 1.0  # Anisotropic scaling.
  xfrac: float = 1.0  # Fractional translation.
  brightness: float = 1.0  # Offset added to every channel.
  contrast: float = 1.0  # Gain about 0.
  xint_max: float = 0.125  # Largest integer translation, relative to the image size.
  scale_std: float = 0.2  # Log2 standard deviation of isotropic scaling.
  rotate_max: float = 1.0  # Range of arbitrary rotation, 1 = full circle.
  aniso_std: float = 0.2  # Log2 standard deviation of anisotropic scaling.
  xfrac_std: float = 0.125  # Standard deviation of fractional translation, relative to size.
  brightness_std: float = 0.2  # Standard deviation of the brightness offset.
  contrast_std: float = 0.5  # Log2 standard deviation of the contrast gain.

  @classmethod
  def preset(cls, name: str, **strengths: float) -> AugmentOptions:
    """The reference's preset `name` ('blit', 'geom', 'color', 'bg', 'bgc') with `strengths`."""
    if name not in _PRESETS:
      raise ValueError(f"unknown augmentation preset {name!r}; expected one of "
                       f"{', '.join(_PRESETS)}")
    multipliers = {field: 1.0 if field in _PRESETS[name] else 0.0 for field in _PRESETS["bgc"]}
    return cls(**{**multipliers, **strengths})

  @property
  def blits(self) -> bool:
    return max(self.xflip, self.rotate90, self.xint) > 0

  @property
  def general(self) -> bool:
    return max(self.scale, self.rotate, self.aniso, self.xfrac) > 0

  @property
  def colors(self) -> bool:
    return max(self.brightness, self.contrast) > 0


class AugmentParams(NamedTuple):
  """The random draws of one call, per image; `apply_params` applies them.

  Attributes:
    g_inv: (N, 3, 3) float32, homogeneous map from output to input pixel coordinates, both
      centred on the image centre (x along W, y along H).
    resample: (N,) bool, some general (non-blit) geometric transform fired, so the image is
      resampled; otherwise `g_inv` holds exact integers and the image is blitted.
    brightness: (N,) float32 offset b (0 where it did not fire).
    contrast: (N,) float32 gain c (1 where it did not fire); colour maps x to c * x + c * b.
    color: (N,) bool, a colour transform fired.
  """
  g_inv: jax.Array
  resample: jax.Array
  brightness: jax.Array
  contrast: jax.Array
  color: jax.Array


def augment(images: jax.Array, key: jax.Array, p: jax.Array | float,
            options: AugmentOptions = AugmentOptions()) -> jax.Array:
  """ADA-augments a batch: each transform fires per image with probability p * multiplier.

  Args:
    images: (N, H, W, C) floating images in [-1, 1], H, W >= 2, any C.
    key: a JAX PRNG key.
    p: the augmentation probability, a float or traced float32 scalar (no recompiles).
    options: multipliers and strengths; static (hashable) under jit.

  Returns:
    The augmented images, same shape and dtype; differentiable w.r.t. `images`.
  """
  _check_images(images)
  n, h, w, _ = images.shape
  params = sample_params(key, p, n, h, w, options)
  return _apply(images, params, options.blits, options.general, options.colors)


def sample_params(key: jax.Array, p: jax.Array | float, batch_size: int, height: int,
                  width: int, options: AugmentOptions = AugmentOptions()) -> AugmentParams:
  """Draws every transform's parameters for a batch, composed in the reference's order.

  All draws come from one uniform and one normal array (cheap to compile), a fixed row per
  quantity, so enabling or disabling one transform leaves the others' draws alone.
  """
  p = jnp.asarray(p, jnp.float32)
  n = batch_size
  uniform_key, normal_key = jax.random.split(key)
  uniform = dict(zip(_UNIFORMS, jax.random.uniform(uniform_key, (len(_UNIFORMS), n))))
  normal = dict(zip(_NORMALS, jax.random.normal(normal_key, (len(_NORMALS), n))))

  def fires(name, multiplier):
    return uniform[name + "_fire"] < multiplier * p

  g_inv = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (n, 3, 3))
  resample = jnp.zeros((n,), bool)
  ones = jnp.ones((n,), jnp.float32)

  # Pixel blitting.
  if options.xflip > 0:
    flip = jnp.where(fires("xflip", options.xflip), jnp.floor(uniform["xflip"] * 2), 0.0)
    g_inv = g_inv @ _scale2d(1 - 2 * flip, ones)
  if options.rotate90 > 0:
    quarter = jnp.floor(uniform["rotate90"] * 4).astype(jnp.int32)
    quarter = jnp.where(fires("rotate90", options.rotate90), quarter, 0)
    cos = jnp.array([1.0, 0.0, -1.0, 0.0])[quarter]  # Exact cos and sin of quarter * pi / 2.
    sin = jnp.array([0.0, 1.0, 0.0, -1.0])[quarter]
    g_inv = g_inv @ _rotate2d(cos, sin)
    if (height - width) % 2:  # An odd turn moves pixel centres onto half pixels: resample it.
      resample = resample | (quarter % 2 == 1)
  if options.xint > 0:
    fire = fires("xint", options.xint)
    tx = jnp.where(fire, (uniform["xint_x"] * 2 - 1) * options.xint_max, 0.0)
    ty = jnp.where(fire, (uniform["xint_y"] * 2 - 1) * options.xint_max, 0.0)
    g_inv = g_inv @ _translate2d(-jnp.round(tx * width), -jnp.round(ty * height))

  # General geometric transformations.
  if options.scale > 0:
    fire = fires("scale", options.scale)
    s = jnp.where(fire, jnp.exp2(normal["scale"] * options.scale_std), 1.0)
    g_inv = g_inv @ _scale2d(1 / s, 1 / s)
    resample = resample | fire
  # Pre- and post-rotation each fire with p_rot, so that P(either) = rotate * p.
  p_rot = 1 - jnp.sqrt(jnp.clip(1 - options.rotate * p, 0, 1))

  def rotation(name):
    fire = uniform[name + "_fire"] < p_rot
    theta = jnp.where(fire, (uniform[name] * 2 - 1) * math.pi * options.rotate_max, 0.0)
    return _rotate2d(jnp.cos(theta), jnp.sin(theta)), fire

  if options.rotate > 0:
    rotate, fire = rotation("rotate_pre")
    g_inv = g_inv @ rotate
    resample = resample | fire
  if options.aniso > 0:
    fire = fires("aniso", options.aniso)
    s = jnp.where(fire, jnp.exp2(normal["aniso"] * options.aniso_std), 1.0)
    g_inv = g_inv @ _scale2d(1 / s, s)
    resample = resample | fire
  if options.rotate > 0:
    rotate, fire = rotation("rotate_post")
    g_inv = g_inv @ rotate
    resample = resample | fire
  if options.xfrac > 0:
    fire = fires("xfrac", options.xfrac)
    tx = jnp.where(fire, normal["xfrac_x"] * options.xfrac_std, 0.0)
    ty = jnp.where(fire, normal["xfrac_y"] * options.xfrac_std, 0.0)
    g_inv = g_inv @ _translate2d(-tx * width, -ty * height)
    resample = resample | fire

  # Colour transformations.
  brightness, contrast = jnp.zeros((n,), jnp.float32), ones
  color = jnp.zeros((n,), bool)
  if options.brightness > 0:
    fire = fires("brightness", options.brightness)
    brightness = jnp.where(fire, normal["brightness"] * options.brightness_std, 0.0)
    color = color | fire
  if options.contrast > 0:
    fire = fires("contrast", options.contrast)
    contrast = jnp.where(fire, jnp.exp2(normal["contrast"] * options.contrast_std), 1.0)
    color = color | fire
  return AugmentParams(g_inv, resample, brightness, contrast, color)


def apply_params(images: jax.Array, params: AugmentParams) -> jax.Array:
  """Applies drawn (or hand-made) parameters to (N, H, W, C) images; see `AugmentParams`."""
  _check_images(images)
  return _apply(images, params, blits=True, general=True, colors=True)


def _apply(images, params, blits, general, colors):
  """Geometry (blit or resample per image), then colour; each skipped statically when off."""
  out = images
  if blits:
    blit_g = jnp.where(params.resample[:, None, None], jnp.eye(3), params.g_inv)
    out = _blit(images, jnp.round(blit_g).astype(jnp.int32))
  if general:
    resample = params.resample[:, None, None, None]

    def resampled():
      return jnp.where(resample, _resample(images, params.g_inv).astype(images.dtype), out)

    out = lax.cond(jnp.any(params.resample), resampled, lambda: out)
  if colors:
    c = params.contrast[:, None, None, None]
    b = params.brightness[:, None, None, None]
    out = jnp.where(params.color[:, None, None, None], (out * c + c * b).astype(out.dtype), out)
  return out


def _check_images(images):
  if images.ndim != 4 or images.shape[1] < 2 or images.shape[2] < 2:
    raise ValueError(f"augment needs images of shape (N, H, W, C) with H, W >= 2; got "
                     f"{images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"augment needs floating images in [-1, 1]; got {images.dtype}")


# ----------------------------------------------------------------------------------------------
# Matrices, batched: each argument is an (N,) array, each result (N, 3, 3).


def _matrix(rows):
  n = max(jnp.shape(x)[0] for row in rows for x in row if jnp.ndim(x))
  rows = [[jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n,)) for x in row] for row in rows]
  return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def _translate2d(tx, ty):
  return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def _scale2d(sx, sy):
  return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def _rotate2d(cos, sin):
  return _matrix([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])


# ----------------------------------------------------------------------------------------------
# Execution.


def _reflect(index, size):
  """Folds integer indices into [0, size) like numpy's 'reflect' padding (edge not repeated)."""
  period = 2 * (size - 1)
  index = jnp.mod(index, period)
  return jnp.where(index < size, index, period - index)


def _gather_pixels(images, rows, cols):
  """images[b, rows[b, i, j], cols[b, i, j], :] for every image b, indices in range."""
  n, h, w, c = images.shape
  index = (rows * w + cols).reshape(n, -1, 1)
  pixels = jnp.take_along_axis(images.reshape(n, h * w, c), index, axis=1)
  return pixels.reshape(n, *rows.shape[1:], c)


def _blit(images, g_inv):
  """Moves whole pixels by integer matrices g_inv (N, 3, 3), reflecting at the borders.

  Doubled centred coordinates (2 * col - (W - 1)) keep the arithmetic in integers; a flip, an
  even turn or an integer shift maps pixel centres onto pixel centres, as does an odd turn when
  H and W have the same parity (others are resampled instead).
  """
  _, h, w, _ = images.shape
  x = (2 * jnp.arange(w) - (w - 1))[None, None, :]
  y = (2 * jnp.arange(h) - (h - 1))[None, :, None]
  g = g_inv[:, :, :, None, None]
  cols = (g[:, 0, 0] * x + g[:, 0, 1] * y + 2 * g[:, 0, 2] + (w - 1)) // 2
  rows = (g[:, 1, 0] * x + g[:, 1, 1] * y + 2 * g[:, 1, 2] + (h - 1)) // 2
  return _gather_pixels(images, _reflect(rows, h), _reflect(cols, w))


def _upsample2x(x, axis):
  """2x up-sampling along `axis` with the sym6 filter (zeros beyond the ends), gain 2.

  The reference's upsample2d, in polyphase form: out[k] = 2 sum_i f[k + 5 - 2 i] x[i].
  """
  length = x.shape[axis]
  taps = len(_SYM6)
  half = taps // 4  # Each phase has taps // 2 taps, reaching `half` samples either side.
  pad = [(0, 0)] * x.ndim
  pad[axis] = (half, half)
  xp = jnp.pad(x, pad)
  phases = []
  for phase in (0, 1):
    acc = 0.0
    for d in range(1 - half - phase, half + 1 - phase):
      tap = _SYM6[taps // 2 - 1 + phase + 2 * d]
      acc = acc + 2 * tap * lax.slice_in_dim(xp, half - d, half - d + length, axis=axis)
    phases.append(acc)
  out = jnp.stack(phases, axis=axis + 1)
  return out.reshape(*x.shape[:axis], 2 * length, *x.shape[axis + 1:])


def _downsample2x(x, axis, length):
  """2x down-sampling along `axis`, cropped to `length` samples: out[n] = sum_t f[t] x[2n+1+t].

  The reference's downsample2d with padding -2 * _FILTER_PAD and flip_filter=True.
  """
  acc = 0.0
  for t, tap in enumerate(_SYM6):
    acc = acc + tap * lax.slice_in_dim(x, 1 + t, 1 + t + 2 * length - 1, stride=2, axis=axis)
  return acc


def _resample(images, g_inv):
  """The reference's single resampling of each image by its inverse matrix g_inv (N, 3, 3)."""
  _, h, w, _ = images.shape
  dtype = jnp.promote_types(images.dtype, jnp.float32)
  x = jnp.pad(images.astype(dtype), ((0, 0), (h - 1, h - 1), (w - 1, w - 1), (0, 0)),
              mode="reflect")
  x = _upsample2x(_upsample2x(x, axis=2), axis=1)
  in_h, in_w = x.shape[1:3]

  # The reference relates centred coordinates by hr = 2 lr - 1/2 (its delay bookkeeping), so in
  # high-resolution pixels g_hr = T(-1/2) S(2) g_inv S(1/2) T(1/2).
  g = g_inv.astype(dtype)
  a = g[:, :2, :2]
  t = 2 * g[:, :2, 2] + 0.5 * a.sum(axis=2) - 0.5
  out_h, out_w = 2 * (h + 2 * _FILTER_PAD), 2 * (w + 2 * _FILTER_PAD)
  u = (jnp.arange(out_w, dtype=dtype) - (out_w - 1) / 2)[None, None, :]
  v = (jnp.arange(out_h, dtype=dtype) - (out_h - 1) / 2)[None, :, None]
  a, t = a[:, :, :, None, None], t[:, :, None, None]
  px = a[:, 0, 0] * u + a[:, 0, 1] * v + t[:, 0] + (in_w - 1) / 2
  py = a[:, 1, 0] * u + a[:, 1, 1] * v + t[:, 1] + (in_h - 1) / 2

  # Bilinear, zeros outside (grid_sample, align_corners=False, in pixel units).
  x0, y0 = jnp.floor(px), jnp.floor(py)
  fx, fy = px - x0, py - y0
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  sampled = 0.0
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      rows, cols = y0 + dy, x0 + dx
      inside = (rows >= 0) & (rows < in_h) & (cols >= 0) & (cols < in_w)
      pixels = _gather_pixels(x, jnp.clip(rows, 0, in_h - 1), jnp.clip(cols, 0, in_w - 1))
      sampled = sampled + (jnp.where(inside, wx * wy, 0.0))[..., None] * pixels

  return _downsample2x(_downsample2x(sampled, axis=1, length=h), axis=2, length=w)
