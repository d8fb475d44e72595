"""A ResNet-style image encoder with a projection head, for 2D slices and 3D volumes, in Flax NNX.

Dar et al. (2023, code Cardio-AI/memorization-ldm) embed images with a self-supervised encoder and
call a synthetic image a copy when its embedding is too close to a training image's. Their 2D
encoder is a ResNet-50 with a 1-channel stem and its last layer replaced by a 128-d linear map;
their 3D one is a VQ-GAN encoder trunk, a 1x1x1 conv to 8 channels on a 4x4x4 grid, and a
512 -> 128 -> 32 head. `Encoder` covers both families with one trunk:

  stem: conv (k x k, stride s) -> GroupNorm -> ReLU [-> 3x3 max-pool, stride 2]
  stages: per stage `blocks` residual blocks (basic: two 3x3 convs; bottleneck: 1x1, 3x3, 1x1
          with 4x wider output), the first of every stage after the first at stride 2
  antialias: optionally, every stride of 2 blur-pooled (Zhang 2019), for invariance to shifts
  pool: "mean" (global average, ResNet) or "flatten" (1x1 conv to `flatten_channels`, then the
        whole grid flattened, Dar et al.'s 3D head)
  head: Linear -> ReLU -> Linear to `embedding_dim` (or one Linear, as Dar et al.'s ResNet-50)

Images are channels last, (N, H, W, C) or (N, D, H, W, C), in [-1, 1]. GroupNorm replaces
BatchNorm, so that an embedding never depends on the other images of its batch (and no batch
statistics need gathering across devices); the last norm of every residual branch starts at zero,
so that every block starts as the identity (Goyal et al. 2017). No pretrained weights: Dar et al.
start their 2D ResNet-50 from ImageNet, memjax trains from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

GROUP_NORM_GROUPS = 32
BLOCKS = ("basic", "bottleneck")
POOLS = ("mean", "flatten")
BOTTLENECK_EXPANSION = 4

_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # He init, as ResNet


def _group_norm(channels: int, *, zero_init: bool = False, rngs: nnx.Rngs) -> nnx.GroupNorm:
  """GroupNorm over gcd(32, channels) groups (32 when the channels allow, as Wu & He 2018)."""
  return nnx.GroupNorm(
      channels, num_groups=math.gcd(GROUP_NORM_GROUPS, channels),
      scale_init=nnx.initializers.zeros_init() if zero_init else nnx.initializers.ones_init(),
      dtype=jnp.float32, rngs=rngs)


def _conv(in_channels: int, out_channels: int, dims: int, kernel_size: int, stride: int = 1, *,
          dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
  """A bias-free `dims`-D convolution with 'SAME' padding (a norm follows every one).

  It computes in `dtype` (float32 weights cast); the norm after it computes in float32.
  """
  return nnx.Conv(in_channels, out_channels, (kernel_size,) * dims, (stride,) * dims,
                  padding="SAME", use_bias=False, kernel_init=_kernel_init, dtype=dtype,
                  rngs=rngs)


def blur_pool(x: jax.Array, dims: int) -> jax.Array:
  """Binomial [1, 2, 1] / 4 blur along each spatial axis, then every other pixel: anti-aliased
  stride-2 subsampling (Zhang 2019), so that a copy moved by a pixel embeds as its original.

  Edges are replicated, so that a constant image stays constant. Written as shifted sums (a
  depthwise convolution and its gradient are slow on CPUs).
  """
  for axis in range(1, dims + 1):
    size = x.shape[axis]
    padded = jnp.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(x.ndim)], mode="edge")

    def window(start, stop, padded=padded, axis=axis):
      return jax.lax.slice_in_dim(padded, start, stop, stride=2, axis=axis)

    count = -(-size // 2)  # 'SAME' stride-2 output size
    x = (window(0, 2 * count - 1) + 2.0 * window(1, 2 * count) + window(2, 2 * count + 1)) / 4.0
  return x


def _shortcut(in_channels: int, out_channels: int, stride: int, dims: int, antialias: bool,
              dtype, rngs: nnx.Rngs) -> nnx.Sequential | None:
  """A residual block's 1x1 conv + GN projection of its input, or None where shapes agree.

  With `antialias`, a stride-2 shortcut blur-pools first and convolves at stride 1.
  """
  if stride == 1 and in_channels == out_channels:
    return None
  layers = [_conv(in_channels, out_channels, dims, 1, 1 if antialias else stride, dtype=dtype,
                  rngs=rngs),
            _group_norm(out_channels, rngs=rngs)]
  if antialias and stride != 1:
    layers.insert(0, lambda x: blur_pool(x, dims))
  return nnx.Sequential(*layers)


class BasicBlock(nnx.Module):
  """conv3x3 -> GN -> ReLU -> conv3x3 -> GN, plus the input (1x1 conv + GN when shapes change).

  With `antialias`, a stride-2 block convolves at stride 1 and blur-pools after the first ReLU
  (Zhang 2019's ConvBlurPool).
  """

  def __init__(self, in_channels: int, channels: int, stride: int, *, dims: int,
               antialias: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    self.dims = dims
    self.blur = antialias and stride != 1
    self.conv1 = _conv(in_channels, channels, dims, 3, 1 if self.blur else stride, dtype=dtype,
                       rngs=rngs)
    self.norm1 = _group_norm(channels, rngs=rngs)
    self.conv2 = _conv(channels, channels, dims, 3, dtype=dtype, rngs=rngs)
    self.norm2 = _group_norm(channels, zero_init=True, rngs=rngs)
    self.out_channels = channels
    self.shortcut = _shortcut(in_channels, channels, stride, dims, antialias, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = nnx.relu(self.norm1(self.conv1(x)))
    if self.blur:
      h = blur_pool(h, self.dims)
    h = self.norm2(self.conv2(h))
    return nnx.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class BottleneckBlock(nnx.Module):
  """1x1 -> 3x3 (stride) -> 1x1 to 4x the width, each with GN, plus the input: ResNet-50's block.

  With `antialias`, the 3x3 conv runs at stride 1 and is blur-pooled after its ReLU.
  """

  def __init__(self, in_channels: int, channels: int, stride: int, *, dims: int,
               antialias: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    out_channels = channels * BOTTLENECK_EXPANSION
    self.dims = dims
    self.blur = antialias and stride != 1
    self.conv1 = _conv(in_channels, channels, dims, 1, dtype=dtype, rngs=rngs)
    self.norm1 = _group_norm(channels, rngs=rngs)
    self.conv2 = _conv(channels, channels, dims, 3, 1 if self.blur else stride, dtype=dtype,
                       rngs=rngs)
    self.norm2 = _group_norm(channels, rngs=rngs)
    self.conv3 = _conv(channels, out_channels, dims, 1, dtype=dtype, rngs=rngs)
    self.norm3 = _group_norm(out_channels, zero_init=True, rngs=rngs)
    self.out_channels = out_channels
    self.shortcut = _shortcut(in_channels, out_channels, stride, dims, antialias, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = nnx.relu(self.norm1(self.conv1(x)))
    h = nnx.relu(self.norm2(self.conv2(h)))
    if self.blur:
      h = blur_pool(h, self.dims)
    h = self.norm3(self.conv3(h))
    return nnx.relu(h + (x if self.shortcut is None else self.shortcut(x)))


def _downsampled(size: int, stride: int) -> int:
  return -(-size // stride)  # 'SAME' padding keeps ceil(size / stride)


class Encoder(nnx.Module):
  """Images (N, *spatial, C) in [-1, 1] -> embeddings (N, embedding_dim).

  Args:
    in_channels: image channels.
    spatial_shape: (H, W) or (D, H, W) of the images; fixes `dims` and, for pool="flatten", the
      head's input size.
    stem_channels, stem_kernel, stem_stride, stem_pool: the stem (ResNet: 64, 7, 2, True).
    stage_channels: per stage, the width of its blocks (a bottleneck block outputs 4x as many).
    stage_blocks: per stage, the number of residual blocks (ResNet-50: (3, 4, 6, 3)).
    block: "basic" or "bottleneck".
    pool: "mean" or "flatten" (see the module docstring).
    flatten_channels: channels of the 1x1 conv before flattening (Dar et al.'s 3D head: 8).
    head_hidden: width of the head's hidden layer; 0 for a single linear map (Dar et al.'s 2D
      ResNet-50, whose last layer maps its 2048 features to the 128-d embedding).
    embedding_dim: the embedding's size (Dar et al.: 128 in 2D, 32 in 3D).
    antialias: blur-pool every stride of 2 (Zhang 2019): strided convs run at stride 1 and
      their output is blurred with a [1, 2, 1] binomial before every other pixel is kept, so
      that a shift by a pixel barely changes the embedding (4x the strided layers' compute).
    dtype: the trunk's convolutions compute in it (mixed precision with bfloat16); parameters,
      norms, the pooled features and the head are float32.
  """

  def __init__(self, *, in_channels: int, spatial_shape: Sequence[int], stem_channels: int = 64,
               stem_kernel: int = 7, stem_stride: int = 2, stem_pool: bool = True,
               stage_channels: Sequence[int] = (64, 128, 256, 512),
               stage_blocks: Sequence[int] = (2, 2, 2, 2), block: str = "basic",
               pool: str = "mean", flatten_channels: int = 8, head_hidden: int = 512,
               embedding_dim: int = 128, antialias: bool = False, dtype=jnp.float32,
               rngs: nnx.Rngs):
    spatial_shape = tuple(int(s) for s in spatial_shape)
    dims = len(spatial_shape)
    if dims not in (2, 3):
      raise ValueError(f"the encoder takes 2D images or 3D volumes, not spatial shape "
                       f"{spatial_shape}")
    if block not in BLOCKS:
      raise ValueError(f"model.block must be one of {BLOCKS}, not {block!r}")
    if pool not in POOLS:
      raise ValueError(f"model.pool must be one of {POOLS}, not {pool!r}")
    if not stage_channels or len(stage_channels) != len(stage_blocks) or min(stage_blocks) < 1:
      raise ValueError(f"model.stage_channels {tuple(stage_channels)} and model.stage_blocks "
                       f"{tuple(stage_blocks)} must be non-empty, of one length, with at least "
                       "one block per stage")
    self.dims = dims
    self.spatial_shape = spatial_shape
    self.embedding_dim = int(embedding_dim)
    self.stem_pool = bool(stem_pool)
    self.antialias = bool(antialias)
    self.stem_blur = antialias and stem_stride == 2
    if antialias and stem_stride not in (1, 2):
      raise ValueError(f"model.antialias blur-pools strides of 2, not model.stem_stride="
                       f"{stem_stride}")
    self.stem = _conv(in_channels, stem_channels, dims, stem_kernel,
                      1 if self.stem_blur else stem_stride, dtype=dtype, rngs=rngs)
    self.stem_norm = _group_norm(stem_channels, rngs=rngs)
    grid = [_downsampled(s, stem_stride) for s in spatial_shape]
    if stem_pool:
      grid = [_downsampled(s, 2) for s in grid]
    block_class = BasicBlock if block == "basic" else BottleneckBlock
    blocks = []
    channels = stem_channels
    for stage, (width, count) in enumerate(zip(stage_channels, stage_blocks)):
      for index in range(count):
        stride = 2 if stage > 0 and index == 0 else 1
        if stride == 2:
          grid = [_downsampled(s, 2) for s in grid]
        blocks.append(block_class(channels, int(width), stride, dims=dims, antialias=antialias,
                                  dtype=dtype, rngs=rngs))
        channels = blocks[-1].out_channels
    self.blocks = nnx.List(blocks)
    self.pool = pool
    self.flatten_conv = (nnx.Conv(channels, flatten_channels, (1,) * dims, dtype=dtype, rngs=rngs)
                         if pool == "flatten" else None)
    features = flatten_channels * math.prod(grid) if pool == "flatten" else channels
    self.feature_grid = tuple(grid)
    self.head_hidden = nnx.Linear(features, head_hidden, rngs=rngs) if head_hidden else None
    self.head_out = nnx.Linear(head_hidden or features, embedding_dim, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The trunk's pooled (or flattened) features, before the projection head."""
    if tuple(x.shape[1:-1]) != self.spatial_shape:
      raise ValueError(f"the encoder was built for images of spatial shape {self.spatial_shape}, "
                       f"got {tuple(x.shape[1:-1])}")
    h = nnx.relu(self.stem_norm(self.stem(x)))
    if self.stem_blur:
      h = blur_pool(h, self.dims)
    if self.stem_pool:
      window = (3,) * self.dims
      if self.antialias:  # Zhang's MaxBlurPool: the max at stride 1, then blur-pooled
        h = blur_pool(nnx.max_pool(h, window, strides=(1,) * self.dims, padding="SAME"),
                      self.dims)
      else:
        h = nnx.max_pool(h, window, strides=(2,) * self.dims, padding="SAME")
    for block in self.blocks:
      h = block(h)
    if self.flatten_conv is None:
      return jnp.mean(h.astype(jnp.float32), axis=tuple(range(1, 1 + self.dims)))
    h = self.flatten_conv(h)
    return h.reshape(h.shape[0], -1).astype(jnp.float32)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.features(x)
    if self.head_hidden is not None:
      h = nnx.relu(self.head_hidden(h))
    return self.head_out(h)
