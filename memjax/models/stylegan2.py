"""StyleGAN2 (Karras et al. 2020) in Flax NNX, layer for layer as NVlabs' stylegan2-ada-pytorch.

The generator is the mapping network (z normalised, `mapping_layers` fully connected layers, 8 by
default, at learning-rate multiplier 0.01, a tracked average of w for truncation) and the synthesis
network (a learned 4x4 constant, modulated 3x3 convolutions with weight demodulation, per-pixel
noise with learned strength, FIR up-sampling with the [1, 3, 3, 1] filter, and the "skip"
architecture's toRGB outputs summed over resolutions). The discriminator is the "resnet"
architecture: fromRGB, residual blocks with FIR down-sampling, then the minibatch standard deviation
layer, a convolution and two fully connected layers. Every layer has equalized learning rate:
weights are stored N(0, 1) (over the learning-rate multiplier) and scaled by 1/sqrt(fan_in) when
used.

Images are channels last, (N, H, W, C), in [-1, 1], any C (1 for chest x-rays, 5 for BraTS). The
parameters keep PyTorch's layouts and names (a convolution's weight is [out, in, kh, kw], a dense
layer's [out, in]; `synthesis.b8.conv0.affine.weight`), so that `load_torch_state_dict` copies a
stylegan2-ada-pytorch state dict in without reshaping anything, and every border, padding and
filter flip follows the reference's `conv2d_resample` and `upfirdn2d` (their transcriptions, with
the CPU's gradient rewrites, are `memjax.models.stylegan2_ops`). Modulation is applied to
the activations rather than folded into per-sample weights (the reference's `fused_modconv=False`
path; the same function, one ordinary convolution per layer for the whole batch). Mixed precision
is `dtype` (G's and D's convolutions, their activations and FIR filters, at every resolution,
unlike the reference's `num_fp16_res` top resolutions only); the parameters, the mapping network,
the affine styles, demodulation, the image summed over toRGBs and D's 4x4 epilogue stay float32.
"""

from __future__ import annotations

from collections.abc import Mapping
import math

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from memjax.models import stylegan2_ops as ops
from memjax.models.stylegan2_ops import SQRT2


class Buffer(nnx.Variable):
  """State that is not trained by gradients: the tracked w average and the constant noise maps."""


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
    return ops.bias_act(x, self.bias[...] * self.bias_gain, self.activation)


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
    self.taps = ops.fir_taps()
    self.weight = nnx.Param(jax.random.normal(
        rngs.params(), (out_channels, in_channels, kernel_size, kernel_size)))
    self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if bias else None

  def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
    weight = (self.weight[...] * self.weight_gain).astype(self.dtype)
    x = ops.conv2d_resample(x.astype(self.dtype), weight, self.taps, down=self.down,
                            padding=self.padding, flip_weight=True)
    default = SQRT2 if self.activation == "lrelu" else 1.0
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return ops.bias_act(x, None if self.bias is None else self.bias[...].astype(x.dtype),
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
    x = ops.normalize_2nd_moment(z)
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
    self.taps = ops.fir_taps()
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
    x = ops.modulated_conv2d(x, self.weight[...], styles, noise, up=self.up, padding=1,
                             taps=self.taps, flip_weight=self.up == 1)
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return ops.bias_act(x, self.bias[...].astype(x.dtype), "lrelu", gain=SQRT2 * gain, clamp=clamp)


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
    x = ops.modulated_conv2d(x, self.weight[...], styles, demodulate=False).astype(jnp.float32)
    return ops.bias_act(x, self.bias[...], clamp=self.conv_clamp)


class SynthesisBlock(nnx.Module):
  """One resolution: (constant | conv0 up x2), conv1, the toRGB added to the up-sampled image."""

  def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
               img_channels: int, *, conv_clamp: float | None = None, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.in_channels = in_channels
    self.dtype = dtype  # of the features; the image stays float32
    self.taps = ops.fir_taps()
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
      img = ops.upsample2d(img, self.taps)
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
      variable.set_value(jnp.asarray(value, variable.dtype))  # Also into an abstract model.
    elif name.rsplit(".", 1)[-1] in _FIXED_BUFFERS:
      expected = np.outer(ops.fir_taps(), ops.fir_taps())
      if value.shape != expected.shape or not np.allclose(value, expected, atol=1e-6):
        raise ValueError(f"{kind} buffer {name} is not the [1, 3, 3, 1] filter memjax uses")
    else:
      unexpected.append(name)
  if unexpected:
    raise ValueError(f"the {kind} state dict holds {len(unexpected)} tensors the memjax model "
                     f"lacks, e.g. {sorted(unexpected)[:4]} (class conditioning, a 'skip' or "
                     "'orig' discriminator and fp16 are not supported)")
