"""StyleGAN2 (Karras et al. 2020) in Flax NNX, layer for layer as NVlabs' stylegan2-ada-pytorch.

The generator is the mapping network (z normalised, 8 fully connected layers at learning-rate
multiplier 0.01, a tracked average of w for truncation) and the synthesis network (a learned 4x4
constant, modulated 3x3 convolutions with weight demodulation, per-pixel noise with learned
strength, FIR up-sampling with the [1, 3, 3, 1] filter, and the "skip" architecture's toRGB
outputs summed over resolutions). The discriminator is the "resnet" architecture: fromRGB,
residual blocks with FIR down-sampling, then the minibatch standard deviation layer, a
convolution and two fully connected layers. Every layer has equalized learning rate: weights are
stored N(0, 1) (over the learning-rate multiplier) and scaled by 1/sqrt(fan_in) when used.

Images are channels last, (N, H, W, C), in [-1, 1], any C (1 for chest x-rays, 5 for BraTS). The
parameters keep PyTorch's layouts and names (a convolution's weight is [out, in, kh, kw], a dense
layer's [out, in]; `synthesis.b8.conv0.affine.weight`), so that `load_torch_state_dict` copies a
stylegan2-ada-pytorch state dict in without reshaping anything, and every border, padding and
filter flip follows the reference's `conv2d_resample` and `upfirdn2d`. Modulation is applied to
the activations rather than folded into per-sample weights (the reference's `fused_modconv=False`
path; the same function, one ordinary convolution per layer for the whole batch). Mixed precision
is `dtype` (G's and D's convolutions, their activations and FIR filters, at every resolution,
unlike the reference's `num_fp16_res` top resolutions only); the parameters, the mapping network,
the affine styles, demodulation, the image summed over toRGBs and D's 4x4 epilogue stay float32.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import math

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2
RESAMPLE_FILTER = (1, 3, 3, 1)
_DIMENSIONS = ("NHWC", "OIHW", "NHWC")


class Buffer(nnx.Variable):
  """State that is not trained by gradients: the tracked w average and the constant noise maps."""


# ----------------------------------------------------------------------------------------------
# Operations: bias + activation, FIR filtering, and convolutions with resampling.


def bias_act(x: jax.Array, bias: jax.Array | None = None, activation: str = "linear",
             gain: float | None = None, clamp: float | None = None) -> jax.Array:
  """x + bias (on the last axis), the activation, times `gain` (default: the activation's), clamped.

  The order and the default gains (sqrt(2) for leaky ReLU, 1 for linear) are the reference's
  `bias_act`.
  """
  if bias is not None:
    x = x + bias
  if activation == "lrelu":
    x = jnp.where(x >= 0, x, x * LRELU_SLOPE)
    default_gain = SQRT2
  elif activation == "linear":
    default_gain = 1.0
  else:
    raise ValueError(f"unknown activation {activation!r}")
  gain = default_gain if gain is None else gain
  if gain != 1:
    x = x * gain
  if clamp is not None and clamp >= 0:
    x = jnp.clip(x, -clamp, clamp)
  return x


def fir_taps(taps=RESAMPLE_FILTER) -> tuple[float, ...]:
  """A separable FIR filter's 1D taps, normalised so that the 2D filter sums to 1.

  A tuple, not an array: NNX would take an array attribute of a module for state.
  """
  total = float(sum(taps))
  return tuple(float(t) / total for t in taps)


def upfirdn2d(x: jax.Array, taps, up: int = 1, down: int = 1,
              padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0,
              flip_filter: bool = False) -> jax.Array:
  """Up-sample by zero insertion, pad, filter with the separable 2D filter, down-sample.

  As the reference's `upfirdn2d`: each sample is followed by up-1 zeros, `padding` is (x0, x1, y0,
  y1) and may be negative (a crop), the 2D filter is the outer product of `taps` (flipped unless
  `flip_filter`) times `gain`, and every `down`-th output is kept. x is (N, H, W, C).
  """
  n, h, w, c = x.shape
  if up > 1:
    x = x.reshape(n, h, 1, w, 1, c)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1), (0, 0)))
    x = x.reshape(n, h * up, w * up, c)
  x0, x1, y0, y1 = padding
  x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (y0, y1, 0), (x0, x1, 0), (0, 0, 0)))
  taps = np.asarray(taps, np.float32)
  if not flip_filter:
    taps = taps[::-1]
  taps = taps * np.float32(gain) ** 0.5  # Half the gain per axis.
  # Each axis in turn, as shifted slices weighted and summed: XLA's CPU depthwise convolutions
  # are an order of magnitude slower than these few multiply-adds.
  for axis in (1, 2):
    length = (x.shape[axis] - len(taps)) // down + 1
    span = (length - 1) * down + 1
    x = sum(float(t) * lax.slice_in_dim(x, i, i + span, stride=down, axis=axis)
            for i, t in enumerate(taps))
  return x


def upsample2d(x: jax.Array, taps, up: int = 2) -> jax.Array:
  """x2 up-sampling with the FIR filter, gain up^2 (the reference's `upsample2d`)."""
  k = len(taps)
  return upfirdn2d(x, taps, up=up, padding=((k + up - 1) // 2, (k - up) // 2) * 2, gain=up**2)


def _conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0,
            flip_weight: bool = True, rewritten_gradient: bool | None = None) -> jax.Array:
  """PyTorch's conv2d (a correlation) with weight [out, in, kh, kw]; flipped: a true convolution.

  A strided convolution's input gradient is an input-dilated convolution, whose own weight
  gradient (which R1 needs: it differentiates the input gradient) XLA:CPU takes on a slow path.
  With `rewritten_gradient` (the default on the CPU) the input gradient is `_strided_input_grad`,
  whose gradients are rewritten through the adjoint as in `_dilated_conv`.
  """
  if not flip_weight:
    w = w[:, :, ::-1, ::-1]
  if rewritten_gradient is None:
    rewritten_gradient = jax.default_backend() == "cpu"
  if stride > 1 and rewritten_gradient:
    return _strided_conv(x, w, stride, padding)
  return _plain_conv(x, w, stride, padding)


def _plain_conv(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
  return lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                  dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _strided_conv(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
  return _plain_conv(x, w, stride, padding)


def _strided_conv_forward(x, w, stride, padding):
  return _plain_conv(x, w, stride, padding), (x, w)


def _strided_conv_backward(stride, padding, residuals, grad):
  x, w = residuals
  (grad_w,) = jax.linear_transpose(lambda k: _plain_conv(x, k, stride, padding), w)(grad)
  return _strided_input_grad(grad, w, stride, padding, x.shape), grad_w


_strided_conv.defvjp(_strided_conv_forward, _strided_conv_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided_input_grad(grad: jax.Array, w: jax.Array, stride: int, padding: int,
                        x_shape: tuple[int, ...]) -> jax.Array:
  """The input gradient of `_plain_conv` (linear in grad and in w), XLA's input-dilated conv."""
  example = jax.ShapeDtypeStruct(x_shape, grad.dtype)
  return jax.linear_transpose(lambda x: _plain_conv(x, w, stride, padding), example)(grad)[0]


def _strided_input_grad_forward(grad, w, stride, padding, x_shape):
  return _strided_input_grad(grad, w, stride, padding, x_shape), (grad, w)


def _strided_input_grad_backward(stride, padding, x_shape, residuals, cotangent):
  grad, w = residuals
  # <A(w)^T grad, c> = <grad, A(w) c>: both gradients are the strided conv's, at input c.
  out, vjp = jax.vjp(lambda k: _plain_conv(cotangent, k, stride, padding), w)
  return out, vjp(grad)[0]


_strided_input_grad.defvjp(_strided_input_grad_forward, _strided_input_grad_backward)


def _conv_transpose2d(x: jax.Array, w: jax.Array, stride: int, padding: int,
                      flip_weight: bool = True, rewritten_gradient: bool | None = None
                      ) -> jax.Array:
  """PyTorch's conv_transpose2d with w [in, out, kh, kw], as a correlation of the dilated input.

  XLA:CPU computes the weight gradient of an input-dilated convolution on a slow path (8 inputs
  of 16x16x512: 13 s, against 72 ms for the forward pass). With `rewritten_gradient` (the
  default on the CPU) that gradient is taken as the weight gradient of the strided convolution
  that is this one's adjoint (`_dilated_conv`), which XLA computes quickly; the values are the
  same. Elsewhere the gradient is XLA's own.
  """
  if not flip_weight:
    w = w[:, :, ::-1, ::-1]
  k = w.shape[2]
  kernel = jnp.swapaxes(w, 0, 1)[:, :, ::-1, ::-1]  # [out, in, kh, kw], spatially reversed.
  edge = k - 1 - padding
  if rewritten_gradient is None:
    rewritten_gradient = jax.default_backend() == "cpu"
  if rewritten_gradient:
    return _dilated_conv(x, kernel, stride, edge)
  return _lhs_dilated_conv(x, kernel, stride, edge)


def _lhs_dilated_conv(x: jax.Array, kernel: jax.Array, stride: int, edge: int) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), ((edge, edge),) * 2,
                                  lhs_dilation=(stride, stride), dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dilated_conv(x: jax.Array, kernel: jax.Array, stride: int, edge: int) -> jax.Array:
  """`_lhs_dilated_conv`, whose kernel gradient is taken through its adjoint (see above)."""
  return _lhs_dilated_conv(x, kernel, stride, edge)


def _dilated_conv_forward(x, kernel, stride, edge):
  return _lhs_dilated_conv(x, kernel, stride, edge), (x, kernel)


def _dilated_conv_backward(stride, edge, residuals, grad):
  x, kernel = residuals

  def adjoint(k):  # grad -> the input gradient, a strided convolution, linear in k and grad
    return jax.linear_transpose(lambda inputs: _lhs_dilated_conv(inputs, k, stride, edge),
                                x)(grad)[0]

  # <conv(x, k), grad> = <x, adjoint(k)>: the kernel gradient is adjoint's, at cotangent x.
  grad_x, adjoint_vjp = jax.vjp(adjoint, kernel)
  return grad_x, adjoint_vjp(x)[0]


_dilated_conv.defvjp(_dilated_conv_forward, _dilated_conv_backward)


def conv2d_resample(x: jax.Array, w: jax.Array, taps=None, up: int = 1,
                    down: int = 1, padding: int = 0, flip_weight: bool = True) -> jax.Array:
  """A convolution (weight [out, in, k, k]) with FIR up- or down-sampling, as the reference's.

  Up-sampling is a stride-2 transposed convolution followed by the filter; down-sampling filters
  first and then convolves with stride 2 (1x1 kernels: filter, decimate, convolve).
  """
  k = w.shape[2]
  f = 0 if taps is None else len(taps)
  p0 = p1 = padding
  if up > 1:
    p0 += (f + up - 1) // 2
    p1 += (f - up) // 2
  if down > 1:
    p0 += (f - down + 1) // 2
    p1 += (f - down) // 2
  if up > 1 and down > 1:
    raise NotImplementedError("up- and down-sampling in one convolution")
  if down > 1:
    if k == 1:
      x = upfirdn2d(x, taps, down=down, padding=(p0, p1, p0, p1))
      return _conv2d(x, w, flip_weight=flip_weight)
    x = upfirdn2d(x, taps, padding=(p0, p1, p0, p1))
    return _conv2d(x, w, stride=down, flip_weight=flip_weight)
  if up > 1:
    if k == 1:
      x = _conv2d(x, w, flip_weight=flip_weight)
      return upfirdn2d(x, taps, up=up, padding=(p0, p1, p0, p1), gain=up**2)
    p0 -= k - 1
    p1 -= k - up
    transposed = max(min(-p0, -p1), 0)
    x = _conv_transpose2d(x, jnp.swapaxes(w, 0, 1), up, transposed, flip_weight=not flip_weight)
    edges = (p0 + transposed, p1 - transposed)
    return upfirdn2d(x, taps, padding=edges * 2, gain=up**2)
  if p0 != p1 or p0 < 0:
    raise NotImplementedError(f"asymmetric padding ({p0}, {p1}) without resampling")
  return _conv2d(x, w, padding=p0, flip_weight=flip_weight)


def modulated_conv2d(x: jax.Array, weight: jax.Array, styles: jax.Array,
                     noise: jax.Array | None = None, up: int = 1, padding: int = 0,
                     taps=None, demodulate: bool = True,
                     flip_weight: bool = True) -> jax.Array:
  """Modulated (and demodulated) convolution of (N, H, W, in) by weight [out, in, k, k].

  Each image's input channels are scaled by its styles (N, in); with `demodulate`, each output
  channel is then divided by the norm of its modulated weights, sqrt(sum_{i,k} (s_i w_oik)^2 +
  1e-8), so that activations keep unit variance. `noise` (N, H, W, 1) is added after.
  The convolution runs in x's dtype; the demodulation coefficients are computed in float32.
  """
  dtype = x.dtype
  x = x * styles.astype(dtype)[:, None, None, :]
  x = conv2d_resample(x, weight.astype(dtype), taps, up=up, padding=padding,
                      flip_weight=flip_weight)
  if demodulate:
    squared = jnp.sum(jnp.square(weight), axis=(2, 3))  # [out, in]
    coefficients = lax.rsqrt(jnp.square(styles) @ squared.T + 1e-8)  # (N, out)
    x = x * coefficients.astype(dtype)[:, None, None, :]
  if noise is not None:
    x = x + noise.astype(dtype)
  return x


def normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + eps)


# ----------------------------------------------------------------------------------------------
# Layers with equalized learning rate.


class FullyConnected(nnx.Module):
  """A dense layer, weight [out, in] ~ N(0, 1) / lr_multiplier scaled by lr_multiplier/sqrt(in)."""

  def __init__(self, in_features: int, out_features: int, *, activation: str = "linear",
               lr_multiplier: float = 1.0, bias_init: float = 0.0, rngs: nnx.Rngs):
    self.activation = activation
    self.weight = nnx.Param(
        jax.random.normal(rngs.params(), (out_features, in_features)) / lr_multiplier)
    self.bias = nnx.Param(jnp.full((out_features,), bias_init, jnp.float32))
    self.weight_gain = lr_multiplier / math.sqrt(in_features)
    self.bias_gain = lr_multiplier

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x @ (self.weight[...] * self.weight_gain).T
    return bias_act(x, self.bias[...] * self.bias_gain, self.activation)


class Conv2dLayer(nnx.Module):
  """The discriminator's convolution: equalized weights, bias, activation, FIR down-sampling."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
               activation: str = "linear", down: int = 1, conv_clamp: float | None = None,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.activation = activation
    self.dtype = dtype  # of the computation and the output
    self.down = down
    self.padding = kernel_size // 2
    self.conv_clamp = conv_clamp
    self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
    self.taps = fir_taps()
    self.weight = nnx.Param(jax.random.normal(
        rngs.params(), (out_channels, in_channels, kernel_size, kernel_size)))
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if bias else None

  def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
    weight = (self.weight[...] * self.weight_gain).astype(self.dtype)
    x = conv2d_resample(x.astype(self.dtype), weight, self.taps, down=self.down,
                        padding=self.padding, flip_weight=True)
    default = SQRT2 if self.activation == "lrelu" else 1.0
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return bias_act(x, None if self.bias is None else self.bias[...].astype(x.dtype),
                    self.activation, gain=default * gain, clamp=clamp)


# ----------------------------------------------------------------------------------------------
# The generator.


class MappingNetwork(nnx.Module):
  """z -> w: normalise z's second moment, then `num_layers` leaky-ReLU dense layers.

  `w_avg` tracks the mean w during training (`update_w_avg`) and is the centre of truncation.
  """

  def __init__(self, z_dim: int, w_dim: int, num_ws: int, *, num_layers: int = 8,
               lr_multiplier: float = 0.01, w_avg_beta: float = 0.995, rngs: nnx.Rngs):
    self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
    self.num_layers = num_layers
    self.w_avg_beta = w_avg_beta
    features = [z_dim] + [w_dim] * num_layers
    for i in range(num_layers):
      setattr(self, f"fc{i}", FullyConnected(features[i], features[i + 1], activation="lrelu",
                                             lr_multiplier=lr_multiplier, rngs=rngs))
    self.w_avg = Buffer(jnp.zeros((w_dim,), jnp.float32))

  def transform(self, z: jax.Array) -> jax.Array:
    """(N, z_dim) -> (N, w_dim), before broadcasting and truncation."""
    x = normalize_2nd_moment(z)
    for i in range(self.num_layers):
      x = getattr(self, f"fc{i}")(x)
    return x

  def broadcast(self, w: jax.Array, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> jax.Array:
    """(N, w_dim) -> ws (N, num_ws, w_dim), pulled toward w_avg by psi (the first `cutoff` ws)."""
    ws = jnp.broadcast_to(w[:, None, :], (w.shape[0], self.num_ws, self.w_dim))
    if truncation_psi != 1:
      truncated = self.w_avg[...] + truncation_psi * (ws - self.w_avg[...])
      if truncation_cutoff is None:
        ws = truncated
      else:
        ws = ws.at[:, :truncation_cutoff].set(truncated[:, :truncation_cutoff])
    return ws

  def __call__(self, z: jax.Array, truncation_psi: float = 1.0,
               truncation_cutoff: int | None = None) -> jax.Array:
    return self.broadcast(self.transform(z), truncation_psi, truncation_cutoff)

  def update_w_avg(self, w: jax.Array) -> None:
    """w_avg <- mean(w) + beta * (w_avg - mean(w)), as the reference does in training mode."""
    mean = jnp.mean(lax.stop_gradient(w), axis=0)
    self.w_avg[...] = mean + self.w_avg_beta * (self.w_avg[...] - mean)


class SynthesisLayer(nnx.Module):
  """Modulated 3x3 convolution (optionally x2 up-sampling), noise, bias, leaky ReLU: x's dtype."""

  def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *,
               up: int = 1, conv_clamp: float | None = None, rngs: nnx.Rngs):
    self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
    self.taps = fir_taps()
    self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0, rngs=rngs)
    self.weight = nnx.Param(jax.random.normal(rngs.params(), (out_channels, in_channels, 3, 3)))
    self.noise_const = Buffer(jax.random.normal(rngs.params(), (resolution, resolution)))
    self.noise_strength = nnx.Param(jnp.zeros((), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))

  def __call__(self, x: jax.Array, w: jax.Array, noise_mode: str, key: jax.Array | None,
               gain: float = 1.0) -> jax.Array:
    styles = self.affine(w)
    noise = None
    if noise_mode == "random":
      shape = (x.shape[0], self.resolution, self.resolution, 1)
      noise = jax.random.normal(key, shape) * self.noise_strength[...]
    elif noise_mode == "const":
      noise = (self.noise_const[...] * self.noise_strength[...])[None, :, :, None]
    elif noise_mode != "none":
      raise ValueError(f"noise_mode must be 'random', 'const' or 'none', not {noise_mode!r}")
    x = modulated_conv2d(x, self.weight[...], styles, noise, up=self.up, padding=1,
                         taps=self.taps, flip_weight=self.up == 1)
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return bias_act(x, self.bias[...].astype(x.dtype), "lrelu", gain=SQRT2 * gain, clamp=clamp)


class ToRGBLayer(nnx.Module):
  """Modulated 1x1 convolution to image channels (in x's dtype), without demodulation: float32."""

  def __init__(self, in_channels: int, out_channels: int, w_dim: int, *,
               conv_clamp: float | None = None, rngs: nnx.Rngs):
    self.conv_clamp = conv_clamp
    self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0, rngs=rngs)
    self.weight = nnx.Param(jax.random.normal(rngs.params(), (out_channels, in_channels, 1, 1)))
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))
    self.weight_gain = 1.0 / math.sqrt(in_channels)

  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    styles = self.affine(w) * self.weight_gain
    x = modulated_conv2d(x, self.weight[...], styles, demodulate=False).astype(jnp.float32)
    return bias_act(x, self.bias[...], clamp=self.conv_clamp)


class SynthesisBlock(nnx.Module):
  """One resolution: (constant | conv0 up x2), conv1, the toRGB added to the up-sampled image."""

  def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
               img_channels: int, *, conv_clamp: float | None = None, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.in_channels = in_channels
    self.dtype = dtype  # of the features; the image stays float32
    self.taps = fir_taps()
    if in_channels == 0:
      self.const = nnx.Param(jax.random.normal(rngs.params(), (out_channels, 4, 4)))
    else:
      self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                  conv_clamp=conv_clamp, rngs=rngs)
    self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                conv_clamp=conv_clamp, rngs=rngs)
    self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp, rngs=rngs)
    self.num_conv = 1 if in_channels == 0 else 2

  def __call__(self, x: jax.Array | None, img: jax.Array | None, ws: jax.Array,
               noise_mode: str, key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    keys = [None, None] if key is None else list(jax.random.split(key))
    if self.in_channels == 0:
      const = jnp.transpose(self.const[...], (1, 2, 0))
      x = jnp.broadcast_to(const[None], (ws.shape[0], *const.shape)).astype(self.dtype)
      x = self.conv1(x, ws[:, 0], noise_mode, keys[1])
    else:
      x = self.conv0(x, ws[:, 0], noise_mode, keys[0])
      x = self.conv1(x, ws[:, 1], noise_mode, keys[1])
    if img is not None:
      img = upsample2d(img, self.taps)
    y = self.torgb(x, ws[:, self.num_conv])
    return x, y if img is None else img + y


def _channels(channel_base: int, channel_max: int, resolution: int) -> int:
  return min(channel_base // resolution, channel_max)


def _check_resolution(resolution: int) -> int:
  log2 = int(round(math.log2(resolution))) if resolution > 0 else 0
  if resolution < 8 or 2**log2 != resolution:
    raise ValueError(f"StyleGAN2 needs square images whose side is a power of 2 of at least 8 "
                     f"(32 to 256 in memjax's configs), not {resolution}")
  return log2


class SynthesisNetwork(nnx.Module):
  """ws (N, num_ws, w_dim) -> images (N, R, R, C): blocks from 4x4 to R, toRGBs summed ("skip")."""

  def __init__(self, w_dim: int, img_resolution: int, img_channels: int, *,
               channel_base: int = 32768, channel_max: int = 512,
               conv_clamp: float | None = None, dtype=jnp.float32, rngs: nnx.Rngs):
    log2 = _check_resolution(img_resolution)
    self.block_resolutions = tuple(2**i for i in range(2, log2 + 1))
    self.num_ws = 0
    for res in self.block_resolutions:
      in_channels = _channels(channel_base, channel_max, res // 2) if res > 4 else 0
      block = SynthesisBlock(in_channels, _channels(channel_base, channel_max, res), w_dim, res,
                             img_channels, conv_clamp=conv_clamp, dtype=dtype, rngs=rngs)
      setattr(self, f"b{res}", block)
      self.num_ws += block.num_conv
    self.num_ws += 1  # The last toRGB.

  def __call__(self, ws: jax.Array, noise_mode: str = "random",
               key: jax.Array | None = None) -> jax.Array:
    if noise_mode == "random" and key is None:
      raise ValueError("noise_mode='random' needs a key")
    x = img = None
    index = 0
    for i, res in enumerate(self.block_resolutions):
      block = getattr(self, f"b{res}")
      block_key = None if key is None else jax.random.fold_in(key, i)
      x, img = block(x, img, ws[:, index:index + block.num_conv + 1], noise_mode, block_key)
      index += block.num_conv
    return img


class Generator(nnx.Module):
  """z (N, z_dim) -> images (N, R, R, C) in about [-1, 1]: the mapping and synthesis networks."""

  def __init__(self, *, img_resolution: int, img_channels: int, z_dim: int = 512,
               w_dim: int = 512, mapping_layers: int = 8, mapping_lr_multiplier: float = 0.01,
               w_avg_beta: float = 0.995, channel_base: int = 32768, channel_max: int = 512,
               conv_clamp: float | None = 256, dtype=jnp.float32, rngs: nnx.Rngs):
    self.z_dim, self.w_dim = z_dim, w_dim
    self.img_resolution, self.img_channels = img_resolution, img_channels
    self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels,
                                      channel_base=channel_base, channel_max=channel_max,
                                      conv_clamp=conv_clamp, dtype=dtype, rngs=rngs)
    self.num_ws = self.synthesis.num_ws
    self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, num_layers=mapping_layers,
                                  lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta,
                                  rngs=rngs)

  def __call__(self, z: jax.Array, key: jax.Array | None = None, *,
               truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
               noise_mode: str = "random") -> jax.Array:
    ws = self.mapping(z, truncation_psi, truncation_cutoff)
    return self.synthesis(ws, noise_mode, key)

  def load_torch_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
    """Copies a stylegan2-ada-pytorch `G` / `G_ema` state dict (names as in PyTorch) in place."""
    _load(self, state, "generator")


# ----------------------------------------------------------------------------------------------
# The discriminator.


class DiscriminatorBlock(nnx.Module):
  """A residual block: (fromRGB), conv0, conv1 down x2, plus a 1x1 down-sampled skip (1/sqrt2)."""

  def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
               *, conv_clamp: float | None = None, dtype=jnp.float32, rngs: nnx.Rngs):
    self.in_channels = in_channels
    if in_channels == 0:
      self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu",
                                 conv_clamp=conv_clamp, dtype=dtype, rngs=rngs)
    self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu",
                             conv_clamp=conv_clamp, dtype=dtype, rngs=rngs)
    self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2,
                             conv_clamp=conv_clamp, dtype=dtype, rngs=rngs)
    self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, dtype=dtype,
                            rngs=rngs)

  def __call__(self, x: jax.Array | None, img: jax.Array) -> jax.Array:
    if self.in_channels == 0:
      x = self.fromrgb(img)
    y = self.skip(x, gain=math.sqrt(0.5))
    x = self.conv0(x)
    x = self.conv1(x, gain=math.sqrt(0.5))
    return y + x


def minibatch_stddev(x: jax.Array, group_size: int = 4, num_channels: int = 1) -> jax.Array:
  """Appends the standard deviation over groups of images as `num_channels` feature maps.

  As the reference: image i belongs to group i mod (N / G), where G = min(group_size, N); the
  per-feature standard deviation over the group is averaged over features and pixels.
  """
  n, h, w, c = x.shape
  g = min(group_size, n)
  if n % g:
    raise ValueError(f"the minibatch standard deviation layer needs a batch divisible by its "
                     f"group size {g}, not {n}")
  f = num_channels
  y = x.reshape(g, n // g, h, w, f, c // f)
  y = y - jnp.mean(y, axis=0)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # (n/g, h, w, f, c/f)
  y = jnp.mean(y, axis=(1, 2, 4))  # (n/g, f)
  y = jnp.tile(y, (g, 1))  # Image i gets its group's, i mod n/g.
  y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f))
  return jnp.concatenate([x, y], axis=-1)


class DiscriminatorEpilogue(nnx.Module):
  """At 4x4: minibatch stddev, a 3x3 conv, a dense layer and the output logit."""

  def __init__(self, in_channels: int, *, mbstd_group_size: int = 4, mbstd_num_channels: int = 1,
               conv_clamp: float | None = None, rngs: nnx.Rngs):
    self.mbstd_group_size, self.mbstd_num_channels = mbstd_group_size, mbstd_num_channels
    self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                            conv_clamp=conv_clamp, rngs=rngs)
    self.fc = FullyConnected(in_channels * 16, in_channels, activation="lrelu", rngs=rngs)
    self.out = FullyConnected(in_channels, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)  # At 4x4, in float32 whatever the blocks' dtype.
    if self.mbstd_num_channels:
      x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = self.conv(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # Flattened as PyTorch's NCHW.
    return self.out(self.fc(x))


class Discriminator(nnx.Module):
  """Images (N, R, R, C) -> logits (N,): the residual StyleGAN2 discriminator."""

  def __init__(self, *, img_resolution: int, img_channels: int, channel_base: int = 32768,
               channel_max: int = 512, conv_clamp: float | None = 256,
               mbstd_group_size: int = 4, mbstd_num_channels: int = 1, dtype=jnp.float32,
               rngs: nnx.Rngs):
    log2 = _check_resolution(img_resolution)
    self.img_resolution, self.img_channels = img_resolution, img_channels
    self.block_resolutions = tuple(2**i for i in range(log2, 2, -1))
    for res in self.block_resolutions:
      channels = _channels(channel_base, channel_max, res)
      setattr(self, f"b{res}", DiscriminatorBlock(
          channels if res < img_resolution else 0, channels,
          _channels(channel_base, channel_max, res // 2), img_channels, conv_clamp=conv_clamp,
          dtype=dtype, rngs=rngs))
    self.b4 = DiscriminatorEpilogue(_channels(channel_base, channel_max, 4),
                                    mbstd_group_size=mbstd_group_size,
                                    mbstd_num_channels=mbstd_num_channels,
                                    conv_clamp=conv_clamp, rngs=rngs)

  def __call__(self, img: jax.Array) -> jax.Array:
    expected = (self.img_resolution, self.img_resolution, self.img_channels)
    if tuple(img.shape[1:]) != expected:
      raise ValueError(f"the discriminator takes images of shape (N, {expected[0]}, "
                       f"{expected[1]}, {expected[2]}), not {tuple(img.shape)}")
    x = None
    for res in self.block_resolutions:
      x = getattr(self, f"b{res}")(x, img)
    return self.b4(x)[:, 0]

  def load_torch_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
    """Copies a stylegan2-ada-pytorch `D` state dict (names as in PyTorch) in place."""
    _load(self, state, "discriminator")


# ----------------------------------------------------------------------------------------------
# Weights from PyTorch.

# Buffers of the reference that are fixed by the architecture rather than learned or tracked.
_FIXED_BUFFERS = ("resample_filter",)


def load_torch_state_dict(state: Mapping[str, np.ndarray], *, generator: Generator | None = None,
                          discriminator: Discriminator | None = None) -> None:
  """Copies stylegan2-ada-pytorch weights into memjax models, in place.

  `state` maps names to arrays as `G_ema.state_dict()` and `D.state_dict()` name them, either
  bare (one model given) or prefixed "G." / "G_ema." and "D." (both in one dict). Every learned
  tensor and tracked buffer (`mapping.w_avg`, `noise_const`) must be present with the shape the
  memjax model has; `resample_filter` buffers are checked to be the [1, 3, 3, 1] filter. Build the
  models with the reference's architecture (resolution, channels, z/w dims, channel_base and
  channel_max, mapping layers) first: a mismatch is named, never silently broadcast.
  """
  if generator is None and discriminator is None:
    raise ValueError("give a generator, a discriminator or both to load into")
  for model, prefixes, kind in ((generator, ("G_ema.", "G."), "generator"),
                                (discriminator, ("D.",), "discriminator")):
    if model is None:
      continue
    found = {p for p in prefixes if any(k.startswith(p) for k in state)}
    if found:
      prefix = sorted(found)[0]  # "G." before "G_ema.": the caller passes one of them.
      if len(found) > 1:
        raise ValueError(f"the state dict holds both {sorted(found)}; pass one generator")
      _load(model, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, kind)
    elif generator is not None and discriminator is not None:
      raise ValueError(f"loading both models needs names prefixed {prefixes[0]!r} for the "
                       f"{kind}; found none")
    else:
      _load(model, state, kind)


def _load(model: nnx.Module, state: Mapping[str, np.ndarray], kind: str) -> None:
  variables = {".".join(str(p) for p in path): variable
               for path, variable in nnx.iter_graph(model) if isinstance(variable, nnx.Variable)}
  missing = sorted(set(variables) - set(state))
  if missing:
    raise ValueError(f"the {kind} state dict lacks {len(missing)} tensors the memjax model has, "
                     f"e.g. {missing[:4]}; was it saved from a model with this architecture?")
  unexpected = []
  for name, value in state.items():
    value = np.asarray(value)
    if name in variables:
      variable = variables[name]
      if tuple(variable.shape) != value.shape:
        raise ValueError(f"{kind} tensor {name}: the state dict's shape {value.shape} differs "
                         f"from the memjax model's {tuple(variable.shape)}; build the model with "
                         "the reference's architecture")
      variable[...] = jnp.asarray(value, variable.dtype)
    elif name.rsplit(".", 1)[-1] in _FIXED_BUFFERS:
      expected = np.outer(fir_taps(), fir_taps())
      if value.shape != expected.shape or not np.allclose(value, expected, atol=1e-6):
        raise ValueError(f"{kind} buffer {name} is not the [1, 3, 3, 1] filter memjax uses")
    else:
      unexpected.append(name)
  if unexpected:
    raise ValueError(f"the {kind} state dict holds {len(unexpected)} tensors the memjax model "
                     f"lacks, e.g. {sorted(unexpected)[:4]} (class conditioning, a 'skip' or "
                     "'orig' discriminator and fp16 are not supported)")
