"""StyleGAN2's operations, as NVlabs keeps them in stylegan2-ada-pytorch's `torch_utils/ops/`.

`bias_act` (bias, activation, gain, clamp), `upfirdn2d` and `upsample2d` (FIR filtering with
up- and down-sampling), `conv2d`, `conv_transpose2d` and `conv2d_resample` (PyTorch's convolutions
and the reference's convolution with FIR resampling), `modulated_conv2d` (modulation and
demodulation) and `normalize_2nd_moment`. Images are channels last, (N, H, W, C); weights keep
PyTorch's layouts ([out, in, kh, kw]; [in, out, kh, kw] for a transposed convolution), so every
border, padding and filter flip is the reference's.

The gradient rewrites: on the CPU, XLA takes the weight gradient of an input-dilated convolution
(a transposed convolution's, or a strided convolution's input gradient, which R1 and the path
length differentiate again) on a slow path. `conv2d` with stride and `conv_transpose2d` then route
those gradients through the adjoint convolution (custom VJPs), which XLA computes quickly; the
values are the same. Elsewhere the gradients are XLA's own.
"""

from __future__ import annotations

import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2
RESAMPLE_FILTER = (1, 3, 3, 1)
_DIMENSIONS = ("NHWC", "OIHW", "NHWC")


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


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0,
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


def conv_transpose2d(x: jax.Array, w: jax.Array, stride: int, padding: int,
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
      return conv2d(x, w, flip_weight=flip_weight)
    x = upfirdn2d(x, taps, padding=(p0, p1, p0, p1))
    return conv2d(x, w, stride=down, flip_weight=flip_weight)
  if up > 1:
    if k == 1:
      x = conv2d(x, w, flip_weight=flip_weight)
      return upfirdn2d(x, taps, up=up, padding=(p0, p1, p0, p1), gain=up**2)
    p0 -= k - 1
    p1 -= k - up
    transposed = max(min(-p0, -p1), 0)
    x = conv_transpose2d(x, jnp.swapaxes(w, 0, 1), up, transposed, flip_weight=not flip_weight)
    edges = (p0 + transposed, p1 - transposed)
    return upfirdn2d(x, taps, padding=edges * 2, gain=up**2)
  if p0 != p1 or p0 < 0:
    raise NotImplementedError(f"asymmetric padding ({p0}, {p1}) without resampling")
  return conv2d(x, w, padding=p0, flip_weight=flip_weight)


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
  """x divided by the root mean square of its features (axis 1): the mapping network's input."""
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + eps)
