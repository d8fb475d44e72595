"""The encoder: ResNet-50's parameter count, Dar et al.'s 3D head, identity blocks at init,
embeddings independent of the batch, shapes in 2D and 3D, and configuration errors."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import nnx

from memjax.models import encoder
from memjax.models.encoder import BasicBlock, BottleneckBlock, Encoder


def rngs(seed=0):
  # The "rbg" generator compiles faster on CPU than threefry (one compilation per weight shape).
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def parameter_count(model):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def torchvision_resnet50_trunk(in_channels):
  """torchvision's resnet50 parameters without its fc layer, from its definition (BatchNorm and
  GroupNorm both hold a scale and a bias per channel)."""
  def conv(cin, cout, k):
    return cin * cout * k * k

  def bn(c):
    return 2 * c

  total = conv(in_channels, 64, 7) + bn(64)
  cin = 64
  for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
    for i in range(blocks):
      total += conv(cin, width, 1) + bn(width) + conv(width, width, 3) + bn(width)
      total += conv(width, 4 * width, 1) + bn(4 * width)
      if i == 0:
        total += conv(cin, 4 * width, 1) + bn(4 * width)  # downsample: conv1x1 + BN
      cin = 4 * width
  return total


def test_resnet50_layout_has_torchvisions_parameter_count():
  assert torchvision_resnet50_trunk(3) == 25_557_032 - (2048 * 1000 + 1000)  # published total
  model = nnx.eval_shape(lambda: Encoder(
      in_channels=1, spatial_shape=(64, 64), stage_channels=(64, 128, 256, 512),
      stage_blocks=(3, 4, 6, 3), block="bottleneck", head_hidden=0, embedding_dim=128,
      rngs=nnx.Rngs(0)))
  # Dar et al.'s 2D encoder: a 1-channel stem and fc 2048 -> 128.
  assert parameter_count(model) == torchvision_resnet50_trunk(1) + 2048 * 128 + 128


def test_dar_3d_head_flattens_8_channels_of_a_4x4x4_grid():
  model = nnx.eval_shape(lambda: Encoder(
      in_channels=1, spatial_shape=(32, 32, 32), stem_channels=16, stem_kernel=3, stem_stride=1,
      stem_pool=False, stage_channels=(32, 64, 128, 256), stage_blocks=(1, 1, 1, 1),
      pool="flatten", flatten_channels=8, head_hidden=128, embedding_dim=32, rngs=nnx.Rngs(0)))
  assert model.feature_grid == (4, 4, 4)
  assert model.head_hidden.kernel.shape == (8 * 4**3, 128)  # 512 -> 128 -> 32
  assert model.head_out.kernel.shape == (128, 32)


@pytest.mark.parametrize("block_class", [BasicBlock, BottleneckBlock])
def test_residual_blocks_start_as_the_identity(block_class):
  channels = 16 if block_class is BasicBlock else 4
  block = block_class(16, channels, 1, dims=2, rngs=rngs())
  assert block.shortcut is None
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 16)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(apply(block, jnp.asarray(x))), np.maximum(x, 0.0))


@nnx.jit
def apply(model, x):
  return model(x)


def random_weights(build, seed=1):
  """The model `build` makes, with random numpy weights (no branch zero, nothing compiled)."""
  graphdef, state = nnx.split(nnx.eval_shape(build))
  rng = np.random.default_rng(seed)

  def draw(x):
    fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
    values = rng.standard_normal(x.shape) / np.sqrt(fan_in)
    return (values if len(x.shape) > 1 else 1.0 + 0.1 * values).astype(np.float32)

  return nnx.merge(graphdef, jax.tree.map(draw, state))


def small_encoder(spatial, channels=2, pool="mean", antialias=False, dtype=jnp.float32):
  return random_weights(lambda: Encoder(
      in_channels=channels, spatial_shape=spatial, stem_channels=8, stem_kernel=3,
      stem_stride=2, stem_pool=True, stage_channels=(8, 16), stage_blocks=(1, 2), pool=pool,
      flatten_channels=4, head_hidden=16, embedding_dim=6, antialias=antialias, dtype=dtype,
      rngs=nnx.Rngs(0)))


def convolution_dtypes(function, *args):
  """The element types of every convolution's (input, kernel, output) in `function`'s program."""
  text = jax.jit(function).lower(*args).as_text()
  return [tuple(t.rsplit("x", 1)[-1] for t in types) for types in re.findall(
      r"stablehlo\.convolution.*: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)>", text)]


@pytest.mark.parametrize("pool", ["mean", "flatten"])
def test_bfloat16_trunk_computes_in_bfloat16_near_float32(pool):
  x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 2)).astype(np.float32)
  models = {dtype: small_encoder((16, 16), pool=pool, antialias=True, dtype=dtype)
            for dtype in (jnp.float32, jnp.bfloat16)}  # the same random weights
  outputs = {}
  for dtype, model in models.items():
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        np.dtype(np.float32)}
    graphdef, state = nnx.split(model)
    types = convolution_dtypes(lambda s, g=graphdef: nnx.merge(g, s)(x), state)
    compute = "bf16" if dtype == jnp.bfloat16 else "f32"
    assert len(types) >= 6 and set(types) == {(compute,) * 3}, types
    outputs[dtype] = np.asarray(jax.jit(lambda s, g=graphdef: nnx.merge(g, s)(x))(state))
  assert outputs[jnp.bfloat16].dtype == np.float32
  want, got = outputs[jnp.float32], outputs[jnp.bfloat16]
  error = np.linalg.norm(got - want) / np.linalg.norm(want)
  assert 0 < error < 2e-2, error


@pytest.mark.parametrize("dims", [2, 3])
def test_blur_pool_is_a_binomial_filter_then_every_other_pixel(dims):
  x = np.random.default_rng(0).standard_normal((2,) + (5, 6, 7)[-dims:] + (3,))
  taps = np.array([1.0, 2.0, 1.0]) / 4.0
  kernel = taps
  for _ in range(dims - 1):
    kernel = np.multiply.outer(kernel, taps)
  every_other = (slice(None, None, 2),) * dims
  want = np.stack([np.stack([scipy.ndimage.correlate(x[n, ..., c], kernel, mode="nearest")
                             [every_other] for c in range(3)], axis=-1) for n in range(2)])
  got = np.asarray(jax.jit(encoder.blur_pool, static_argnums=1)(x.astype(np.float32), dims))
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("spatial,pool,grid,antialias", [((16, 16), "mean", (2, 2), True),
                                                         ((8, 12, 12), "flatten", (1, 2, 2),
                                                          False)])
def test_embedding_of_an_image_does_not_depend_on_its_batch(spatial, pool, grid, antialias):
  model = small_encoder(spatial, pool=pool, antialias=antialias)
  assert model.feature_grid == grid and model.dims == len(spatial)
  x = jax.random.uniform(jax.random.key(0), (5, *spatial, 2), minval=-1.0, maxval=1.0)
  together = np.asarray(apply(model, x))
  assert together.shape == (5, 6) and together.dtype == np.float32
  alone = np.concatenate([np.asarray(apply(model, x[i:i + 1])) for i in range(5)])
  np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
  assert np.std(together, axis=0).min() > 1e-4  # different images, different embeddings


def test_configuration_errors_name_the_setting():
  with pytest.raises(ValueError, match="model.block"):
    Encoder(in_channels=1, spatial_shape=(8, 8), block="wide", rngs=rngs())
  with pytest.raises(ValueError, match="model.pool"):
    Encoder(in_channels=1, spatial_shape=(8, 8), pool="max", rngs=rngs())
  with pytest.raises(ValueError, match="stage_blocks"):
    Encoder(in_channels=1, spatial_shape=(8, 8), stage_channels=(8,), stage_blocks=(1, 1),
            rngs=rngs())
  with pytest.raises(ValueError, match="2D images or 3D volumes"):
    Encoder(in_channels=1, spatial_shape=(8,), rngs=rngs())
  model = small_encoder((16, 16))
  with pytest.raises(ValueError, match=r"spatial shape \(16, 16\)"):
    model(jnp.zeros((1, 8, 8, 2)))
  assert encoder.GROUP_NORM_GROUPS == 32
