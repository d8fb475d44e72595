"""The noise-prediction U-Net of Ho et al. (2020) as openai/guided-diffusion builds it, in Flax NNX.

Images are channels last, (N, H, W, C) for `dims=2` and (N, D, H, W, C) for `dims=3`. The network
follows guided-diffusion's `UNetModel` (with `conv_resample=True` and no class conditioning), so a
configuration there and here have the same layers and parameter count:

  timestep -> sinusoids -> Linear -> SiLU -> Linear   (the embedding every ResBlock reads)
  input conv 3x3
  down: per level `num_res_blocks` x (ResBlock [+ attention]), then between levels a stride-2
        conv (or, with `resblock_updown`, a ResBlock that average-pools)
  middle: ResBlock, attention, ResBlock
  up: per level `num_res_blocks + 1` x (ResBlock on [h, skip] [+ attention]), then nearest x2 +
      conv (or, with `resblock_updown`, a ResBlock that repeats pixels)
  out: GroupNorm -> SiLU -> conv 3x3 (zero-initialised)

guided-diffusion's other switches are here under its names: `num_heads` (heads per attention
layer, used when `num_head_channels` is -1), `num_head_channels`, `use_scale_shift_norm` and
`use_new_attention_order`. Its `model_and_diffusion_defaults()` are num_heads=4,
num_head_channels=-1, use_scale_shift_norm=True, resblock_updown=False and
use_new_attention_order=False (configs/default.py's `ddpm`).

Weights start as PyTorch's defaults do (kernels and biases uniform in +-1/sqrt(fan_in)), and the
last layer of every residual branch and of the network starts at zero, as guided-diffusion's
`zero_module` does: at initialisation every block is the identity and the model predicts zero noise.
Unlike guided-diffusion, 3D volumes are down- and upsampled along all three axes.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

GROUP_NORM_GROUPS = 32
GROUP_NORM_EPSILON = 1e-5  # PyTorch's GroupNorm default, which guided-diffusion uses.

# guided-diffusion's channel_mult for each image size when its --channel_mult is "" (the default).
GUIDED_DIFFUSION_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def guided_diffusion_channel_mult(image_size: int) -> tuple[float, ...]:
  """The channel multipliers guided-diffusion's `create_model` picks for `image_size`."""
  if image_size not in GUIDED_DIFFUSION_CHANNEL_MULT:
    raise ValueError(
        f"guided-diffusion chooses channel_mult only for image sizes "
        f"{sorted(GUIDED_DIFFUSION_CHANNEL_MULT)}, not {image_size}: set model.channel_mult")
  return GUIDED_DIFFUSION_CHANNEL_MULT[image_size]


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (N,) timesteps, (N, dim): cosines then sines, as guided-diffusion."""
  half = dim // 2
  frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]
  embedding = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
  if dim % 2:
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


class _OneDraw:
  """The random weights of a whole U-Net from one uniform draw, set after the layers are built.

  Drawn layer by layer, every weight is its own random-number program (a threefry loop, and one
  more to derive its key): hundreds for the paper's U-Net, which XLA compiled for minutes on a
  GPU. While a U-Net is built, its layers get zero placeholders and their bounds are noted here;
  `fill` then draws U(-1, 1) once for all of them and scales each slice by its bound.
  """

  active: list[_OneDraw] = []  # the draw of the U-Net being built, if any

  def __init__(self):
    self.requests = []  # (placeholder, bound), in the order the layers asked

  def uniform(self, shape, dtype, bound: float) -> jax.Array:
    placeholder = jnp.zeros(shape, dtype)
    self.requests.append((placeholder, bound))
    return placeholder

  def fill(self, module: nnx.Module, key: jax.Array) -> None:
    layout = tuple((tuple(p.shape), jnp.dtype(p.dtype).name, bound) for p, bound in self.requests)
    drawn = dict(zip((id(p) for p, _ in self.requests), _draw_uniform(key, layout)))
    for _, node in nnx.iter_graph(module):
      if isinstance(node, nnx.Param) and id(node.get_raw_value()) in drawn:
        node.set_raw_value(drawn.pop(id(node.get_raw_value())))
    if drawn:
      raise AssertionError(f"{len(drawn)} placeholder weights were not found in the module")


@functools.partial(jax.jit, static_argnums=1)
def _draw_uniform(key: jax.Array, layout) -> list[jax.Array]:
  """Arrays of (shape, dtype, bound) `layout`, U(+-bound), as slices of one U(-1, 1) draw.

  Jitted, so that a U-Net built outside jit compiles one program, not one per slice.
  """
  sizes = [math.prod(shape) for shape, _, _ in layout]
  values = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
  offsets = [0, *itertools.accumulate(sizes)]
  return [(values[start:stop].reshape(shape) * bound).astype(dtype)
          for (shape, dtype, bound), start, stop in zip(layout, offsets, offsets[1:])]


def _uniform(key, shape, dtype, bound: float) -> jax.Array:
  if _OneDraw.active:
    return _OneDraw.active[-1].uniform(shape, dtype, bound)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _torch_kernel_init(key, shape, dtype=jnp.float32):
  """PyTorch's default init of Conv and Linear (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)).

  fan_in is the product of the kernel's axes but the last (the output channels).
  """
  return _uniform(key, shape, dtype, 1.0 / math.sqrt(math.prod(shape[:-1])))


def _torch_bias_init(fan_in: int):
  """PyTorch's default bias init, U(+-1/sqrt(fan_in)), which needs the layer's fan-in."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return _uniform(key, shape, dtype, bound)

  return init


def _conv(in_channels: int, out_channels: int, dims: int, *, rngs: nnx.Rngs, kernel_size: int = 3,
          stride: int = 1, padding="SAME", zero_init: bool = False, dtype=jnp.float32) -> nnx.Conv:
  """A `dims`-D convolution, PyTorch-initialised or zero-initialised."""
  fan_in = in_channels * kernel_size**dims
  return nnx.Conv(
      in_channels, out_channels, (kernel_size,) * dims, (stride,) * dims, padding=padding,
      kernel_init=nnx.initializers.zeros_init() if zero_init else _torch_kernel_init,
      bias_init=nnx.initializers.zeros_init() if zero_init else _torch_bias_init(fan_in),
      dtype=dtype, rngs=rngs)


def _linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, zero_init: bool = False,
            dtype=jnp.float32) -> nnx.Linear:
  """A dense layer (also the 1x1 convolutions of attention), PyTorch- or zero-initialised."""
  return nnx.Linear(
      in_features, out_features,
      kernel_init=nnx.initializers.zeros_init() if zero_init else _torch_kernel_init,
      bias_init=nnx.initializers.zeros_init() if zero_init else _torch_bias_init(in_features),
      dtype=dtype, rngs=rngs)


def _group_norm(channels: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
  """GroupNorm over min(32, channels) groups, computed in float32 whatever the model's dtype."""
  groups = min(GROUP_NORM_GROUPS, channels)
  if channels % groups:
    raise ValueError(
        f"GroupNorm needs a channel count divisible by {groups} groups, got {channels} channels; "
        f"choose model_channels and channel_mult so that every level's channels, and the sum of "
        f"two levels' channels where skips are concatenated, are multiples of {GROUP_NORM_GROUPS}")
  return nnx.GroupNorm(channels, num_groups=groups, epsilon=GROUP_NORM_EPSILON,
                       dtype=jnp.float32, rngs=rngs)


def _reshape(x: jax.Array, shape) -> jax.Array:
  """Reshapes the axes after the batch axis, keeping the batch axis's sharding.

  On a mesh with explicit axes (what `jax.make_mesh` makes by default) JAX cannot always infer the
  sharding of a reshape that splits and merges several axes, so it is stated: the batch axis as it
  was, the rest whole.
  """
  sharding = jax.typeof(x).sharding
  batch_axis = sharding.spec[0] if len(sharding.spec) else None
  if batch_axis is None:
    return x.reshape(shape)
  spec = PartitionSpec(batch_axis, *(None,) * (len(shape) - 1))
  return jax.lax.reshape(x, tuple(shape), out_sharding=NamedSharding(sharding.mesh, spec))


def _downsample_mean(x: jax.Array) -> jax.Array:
  """Halves every spatial axis of (N, *spatial, C) by averaging 2x2 (2x2x2) blocks."""
  n, *spatial, c = x.shape
  blocks = _reshape(x, [n] + [size for side in spatial for size in (side // 2, 2)] + [c])
  return jnp.mean(blocks, axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def _upsample_nearest(x: jax.Array) -> jax.Array:
  """Doubles every spatial axis of (N, *spatial, C) by repeating each pixel (or voxel)."""
  n, *spatial, c = x.shape
  expanded = _reshape(x, [n] + [size for side in spatial for size in (side, 1)] + [c])
  expanded = jnp.broadcast_to(expanded,
                              [n] + [size for side in spatial for size in (side, 2)] + [c])
  return _reshape(expanded, [n] + [2 * side for side in spatial] + [c])


RESAMPLE = (None, "down", "up")


class ResBlock(nnx.Module):
  """Residual block conditioned on the timestep embedding (guided-diffusion's `ResBlock`).

  GroupNorm -> SiLU -> conv3x3, plus a projection of the embedding (added, or a FiLM-like scale and
  shift of the second norm with `use_scale_shift_norm`), GroupNorm -> SiLU -> dropout ->
  zero-initialised conv3x3, added to the input (through a 1x1 conv when the channels change).

  `resample` "down" or "up" makes it guided-diffusion's up/down block (`resblock_updown`): the
  input and the branch (after the first SiLU, before the first conv) are halved by 2x2 averaging
  or doubled by repeating pixels, without learned weights.
  """

  def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, dims: int,
               dropout: float, use_scale_shift_norm: bool, dtype, rngs: nnx.Rngs,
               resample: str | None = None):
    if resample not in RESAMPLE:
      raise ValueError(f"resample must be one of {RESAMPLE}, got {resample!r}")
    self.use_scale_shift_norm = use_scale_shift_norm
    self.resample = resample
    self.in_norm = _group_norm(in_channels, rngs=rngs)
    self.in_conv = _conv(in_channels, out_channels, dims, dtype=dtype, rngs=rngs)
    emb_features = 2 * out_channels if use_scale_shift_norm else out_channels
    self.emb_proj = _linear(emb_channels, emb_features, dtype=dtype, rngs=rngs)
    self.out_norm = _group_norm(out_channels, rngs=rngs)
    # No module (and no rng state) when dropout is off, as in the paper's configuration.
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.out_conv = _conv(out_channels, out_channels, dims, zero_init=True, dtype=dtype, rngs=rngs)
    self.skip = (_conv(in_channels, out_channels, dims, kernel_size=1, dtype=dtype, rngs=rngs)
                 if in_channels != out_channels else None)

  def __call__(self, x: jax.Array, emb: jax.Array, *, deterministic: bool) -> jax.Array:
    h = nnx.silu(self.in_norm(x))
    if self.resample is not None:
      resample = _downsample_mean if self.resample == "down" else _upsample_nearest
      h, x = resample(h), resample(x)
    h = self.in_conv(h)
    emb_out = self.emb_proj(nnx.silu(emb)).astype(h.dtype)
    emb_out = _reshape(emb_out, (emb_out.shape[0],) + (1,) * (h.ndim - 2) + (emb_out.shape[-1],))
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = self.out_norm(h) * (1 + scale) + shift
    else:
      h = self.out_norm(h + emb_out)
    h = nnx.silu(h)
    if self.dropout is not None:
      h = self.dropout(h, deterministic=deterministic)
    h = self.out_conv(h)
    return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nnx.Module):
  """Multi-head self-attention over all pixels (or voxels), added to the input.

  guided-diffusion's `AttentionBlock`: heads of `num_head_channels` channels each, or, with
  `num_head_channels=-1`, `num_heads` heads whatever the channels. The 1x1 qkv projection's output
  channels are, per head, that head's q, k and v (the legacy order, `QKVAttentionLegacy`), or with
  `use_new_attention_order` all heads' q, then all k, then all v (`QKVAttention`).
  """

  def __init__(self, channels: int, num_head_channels: int = -1, *, num_heads: int = 1,
               use_new_attention_order: bool = False, dtype, rngs: nnx.Rngs):
    if num_head_channels == -1:
      if num_heads < 1 or channels % num_heads:
        raise ValueError(
            f"attention over {channels} channels cannot be split into {num_heads} heads: "
            f"num_heads must divide the channels of every level with attention (used when "
            f"num_head_channels is -1)")
      self.num_heads = num_heads
    elif num_head_channels <= 0 or channels % num_head_channels:
      raise ValueError(
          f"attention over {channels} channels cannot use heads of {num_head_channels} channels: "
          f"num_head_channels must divide the channels of every level with attention (or be -1)")
    else:
      self.num_heads = channels // num_head_channels
    self.use_new_attention_order = use_new_attention_order
    self.norm = _group_norm(channels, rngs=rngs)
    self.qkv = _linear(channels, 3 * channels, dtype=dtype, rngs=rngs)
    self.proj_out = _linear(channels, channels, zero_init=True, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    n, c = x.shape[0], x.shape[-1]
    length = math.prod(x.shape[1:-1])
    h = _reshape(self.norm(x), (n, length, c))
    head_channels = c // self.num_heads
    if self.use_new_attention_order:
      qkv = _reshape(self.qkv(h), (n, length, 3, self.num_heads, head_channels))
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      qkv = _reshape(self.qkv(h), (n, length, self.num_heads, 3, head_channels))
      q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    attended = jax.nn.dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head channels)) v
    return x + _reshape(self.proj_out(_reshape(attended, (n, length, c))), x.shape)


class Downsample(nnx.Module):
  """Halves every spatial axis with a stride-2 conv3x3 padded by 1 on each side (PyTorch's windows).

  Flax's "SAME" would pad (0, 1) for a stride of 2 and centre the windows on odd pixels; padding
  (1, 1) centres them on even pixels, as guided-diffusion's `Downsample` does.
  """

  def __init__(self, channels: int, *, dims: int, dtype, rngs: nnx.Rngs):
    self.conv = _conv(channels, channels, dims, stride=2, padding=((1, 1),) * dims, dtype=dtype,
                      rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


class Upsample(nnx.Module):
  """Doubles every spatial axis: nearest-neighbour repeat, then conv3x3."""

  def __init__(self, channels: int, *, dims: int, dtype, rngs: nnx.Rngs):
    self.conv = _conv(channels, channels, dims, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(_upsample_nearest(x))


class ResidualStage(nnx.Module):
  """One entry of the U-Net's paths: a ResBlock, then attention and upsampling where configured.

  The upsampling is an `Upsample`, or with `resblock_updown` a ResBlock with resample="up".
  """

  def __init__(self, res_block: ResBlock, attention: AttentionBlock | None = None,
               upsample: Upsample | ResBlock | None = None):
    self.res_block = res_block
    self.attention = attention
    self.upsample = upsample

  def __call__(self, x: jax.Array, emb: jax.Array, *, deterministic: bool) -> jax.Array:
    x = self.res_block(x, emb, deterministic=deterministic)
    if self.attention is not None:
      x = self.attention(x)
    if isinstance(self.upsample, ResBlock):
      x = self.upsample(x, emb, deterministic=deterministic)
    elif self.upsample is not None:
      x = self.upsample(x)
    return x


class UNet(nnx.Module):
  """Predicts the noise in x_t from x_t and t: guided-diffusion's `UNetModel`, channels last.

  `attention_resolutions` are spatial sides (16: attention where the feature maps are 16x16, at
  downsampling factor image_size // 16), as guided-diffusion's command-line flag means them
  (its `create_model` turns "16,8" into the factors image_size // 16 and image_size // 8); each
  must be the side of one of the levels. Inputs may have any spatial size divisible by
  2**(len(channel_mult) - 1); attention sits at the levels chosen from `image_size`.

  Attention layers have `num_heads` heads when `num_head_channels` is -1, else heads of
  `num_head_channels` channels (guided-diffusion's rule); `use_new_attention_order`,
  `use_scale_shift_norm` and `resblock_updown` are guided-diffusion's switches of the same names.

  Dropout (when `dropout > 0`) draws its masks from the `dropout` stream of the `rngs` given at
  construction (the `default` stream when there is none), kept as rng state inside the model, and
  is applied only when called with `deterministic=False`; under `nnx.jit` that state advances with
  every call.

  `dtype` is the compute dtype of convolutions, dense layers and attention (parameters stay
  float32); GroupNorm and the last conv compute in float32, and the output is float32.

  Data parallel use with a mesh of explicit axes (what `jax.make_mesh` and `memjax.parallel` make):
  put the model's state on the mesh (e.g. replicated) before building an optimizer, and trace under
  `jax.set_mesh(mesh)`; the batch axis of x and t may then be split over the mesh.
  """

  def __init__(self, *, in_channels: int, out_channels: int, model_channels: int = 64,
               channel_mult: tuple[int, ...] = (1, 2, 4, 8), num_res_blocks: int = 2,
               attention_resolutions: tuple[int, ...] = (16,), num_head_channels: int = 64,
               num_heads: int = 1, dropout: float = 0.0, dims: int = 2, image_size: int = 64,
               use_scale_shift_norm: bool = False, resblock_updown: bool = False,
               use_new_attention_order: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    draw = _OneDraw()
    _OneDraw.active.append(draw)
    try:
      self._build(in_channels, out_channels, model_channels, channel_mult, num_res_blocks,
                  attention_resolutions, num_head_channels, num_heads, dropout, dims,
                  image_size, use_scale_shift_norm, resblock_updown, use_new_attention_order,
                  dtype, rngs)
    finally:
      _OneDraw.active.remove(draw)
    draw.fill(self, rngs.params())

  def _build(self, in_channels, out_channels, model_channels, channel_mult, num_res_blocks,
             attention_resolutions, num_head_channels, num_heads, dropout, dims, image_size,
             use_scale_shift_norm, resblock_updown, use_new_attention_order, dtype, rngs):
    if dims not in (2, 3):
      raise ValueError(f"dims must be 2 (images) or 3 (volumes), got {dims}")
    if not channel_mult or num_res_blocks < 1 or model_channels < 1:
      raise ValueError(
          "a U-Net needs at least one level (channel_mult), num_res_blocks >= 1 and "
          f"model_channels >= 1; got {channel_mult}, {num_res_blocks}, {model_channels}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    downsample_factor = 2**(len(channel_mult) - 1)
    if image_size % downsample_factor:
      raise ValueError(f"image_size {image_size} is not divisible by {downsample_factor}, the "
                       f"downsampling of {len(channel_mult)} levels")
    level_resolutions = [image_size // 2**level for level in range(len(channel_mult))]
    unreachable = sorted(set(attention_resolutions) - set(level_resolutions))
    if unreachable:
      raise ValueError(f"attention_resolutions {unreachable} are not the side of any level; with "
                       f"image_size {image_size} and {len(channel_mult)} levels the sides are "
                       f"{level_resolutions}")
    self.in_channels = in_channels
    self.out_channels = out_channels
    self.model_channels = model_channels
    self.dims = dims
    self.downsample_factor = downsample_factor
    self.dtype = dtype
    emb_channels = 4 * model_channels

    def res_block(in_ch, out_ch, resample=None):
      return ResBlock(in_ch, out_ch, emb_channels, dims=dims, dropout=dropout,
                      use_scale_shift_norm=use_scale_shift_norm, dtype=dtype, rngs=rngs,
                      resample=resample)

    def attention(ch):
      return AttentionBlock(ch, num_head_channels, num_heads=num_heads,
                            use_new_attention_order=use_new_attention_order, dtype=dtype,
                            rngs=rngs)

    def downsample(ch):
      if resblock_updown:
        return ResidualStage(res_block(ch, ch, "down"))
      return Downsample(ch, dims=dims, dtype=dtype, rngs=rngs)

    def upsample(ch):
      if resblock_updown:
        return res_block(ch, ch, "up")
      return Upsample(ch, dims=dims, dtype=dtype, rngs=rngs)

    self.time_embed_in = _linear(model_channels, emb_channels, dtype=dtype, rngs=rngs)
    self.time_embed_out = _linear(emb_channels, emb_channels, dtype=dtype, rngs=rngs)

    ch = int(channel_mult[0] * model_channels)
    self.input_conv = _conv(in_channels, ch, dims, dtype=dtype, rngs=rngs)
    skip_channels = [ch]
    down_blocks = []
    for level, mult in enumerate(channel_mult):
      level_channels = int(mult * model_channels)
      with_attention = level_resolutions[level] in attention_resolutions
      for _ in range(num_res_blocks):
        down_blocks.append(ResidualStage(
            res_block(ch, level_channels), attention(level_channels) if with_attention else None))
        ch = level_channels
        skip_channels.append(ch)
      if level != len(channel_mult) - 1:
        down_blocks.append(downsample(ch))
        skip_channels.append(ch)
    self.down_blocks = nnx.List(down_blocks)

    self.middle_in = res_block(ch, ch)
    self.middle_attention = attention(ch)
    self.middle_out = res_block(ch, ch)

    up_blocks = []
    for level, mult in reversed(list(enumerate(channel_mult))):
      level_channels = int(mult * model_channels)
      with_attention = level_resolutions[level] in attention_resolutions
      for i in range(num_res_blocks + 1):
        with_upsample = level > 0 and i == num_res_blocks
        up_blocks.append(ResidualStage(
            res_block(ch + skip_channels.pop(), level_channels),
            attention(level_channels) if with_attention else None,
            upsample(level_channels) if with_upsample else None))
        ch = level_channels
    self.up_blocks = nnx.List(up_blocks)

    self.out_norm = _group_norm(ch, rngs=rngs)
    self.out_conv = _conv(ch, out_channels, dims, zero_init=True, dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array, t: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Predicted noise (float32, N, *spatial, out_channels) for x_t at timesteps t (N,)."""
    if x.ndim != self.dims + 2 or x.shape[-1] != self.in_channels:
      raise ValueError(f"expected inputs (N, {'D, ' if self.dims == 3 else ''}H, W, "
                       f"{self.in_channels}), got shape {x.shape}")
    if any(side % self.downsample_factor for side in x.shape[1:-1]):
      raise ValueError(f"every spatial side must be divisible by {self.downsample_factor}, got "
                       f"shape {x.shape}")
    if t.shape != x.shape[:1]:
      raise ValueError(f"expected one timestep per example, shape {x.shape[:1]}, got {t.shape}")
    emb = self.time_embed_out(nnx.silu(self.time_embed_in(
        timestep_embedding(t, self.model_channels))))

    h = self.input_conv(x)
    skips = [h]
    for block in self.down_blocks:
      if isinstance(block, Downsample):
        h = block(h)
      else:
        h = block(h, emb, deterministic=deterministic)
      skips.append(h)
    h = self.middle_in(h, emb, deterministic=deterministic)
    h = self.middle_attention(h)
    h = self.middle_out(h, emb, deterministic=deterministic)
    for block in self.up_blocks:
      h = block(jnp.concatenate([h, skips.pop()], axis=-1), emb, deterministic=deterministic)
    return self.out_conv(nnx.silu(self.out_norm(h)))


def count_parameters(model: nnx.Module) -> int:
  """Number of trainable scalars (nnx.Param leaves) in a model."""
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
