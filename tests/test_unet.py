"""The U-Net: shapes, zero output at init, dependence on x and t, parameter counts, dropout,
attention placement, configuration errors, and a jitted gradient step on a sharded batch."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from memjax import parallel
from memjax.models import unet
from memjax.models.unet import AttentionBlock, UNet

TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
            num_head_channels=32, image_size=16)


def rngs(seed=0):
  # The "rbg" generator compiles faster on CPU than threefry: every parameter shape that an
  # eager initialisation meets is one compilation.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def tiny_unet(channels=1, seed=0, **overrides):
  return UNet(**{**TINY, "in_channels": channels, "out_channels": channels, **overrides},
              rngs=rngs(seed))


def perturbed(model, seed=1, scale=0.05):
  """A copy of the model with noise added to every parameter, so that no residual branch is zero."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(seed)  # numpy: no compilation per parameter shape
  params = jax.tree.map(
      lambda p: p + scale * rng.standard_normal(p.shape).astype(np.float32), params)
  return nnx.merge(graphdef, params, rest)


@functools.partial(nnx.jit, static_argnames="deterministic")
def forward(model, x, t, deterministic=True):
  return model(x, t, deterministic=deterministic)


def images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


# Parameter counts of the layers, written from PyTorch's definitions (weights + biases).
def conv(cin, cout, kernel=3, dims=2):
  return kernel**dims * cin * cout + cout


def linear(fan_in, fan_out):
  return fan_in * fan_out + fan_out


def norm(channels):
  return 2 * channels


def res_block(cin, cout, emb, dims=2, scale_shift=False):
  skip = conv(cin, cout, 1, dims) if cin != cout else 0
  return (norm(cin) + conv(cin, cout, dims=dims) + linear(emb, (2 if scale_shift else 1) * cout)
          + norm(cout) + conv(cout, cout, dims=dims) + skip)


def attention(channels):
  return norm(channels) + linear(channels, 3 * channels) + linear(channels, channels)


def guided_diffusion_layout(image_size, in_channels, model_channels, out_channels,
                            num_res_blocks, attention_resolutions, channel_mult, num_heads=1,
                            num_head_channels=-1, resblock_updown=False):
  """The layers of guided-diffusion's UNetModel, in order, following its constructor loop.

  Entries: ("time_embed", model_channels, emb), ("conv", in, out), ("res", in, out),
  ("attention", channels, heads), ("downsample" | "upsample" | "res_down" | "res_up", channels),
  ("out", channels, out_channels).
  """
  attention_ds = [image_size // res for res in attention_resolutions]  # script_util's conversion

  def attention_layer(ch):  # AttentionBlock's head rule
    return ("attention", ch, num_heads if num_head_channels == -1 else ch // num_head_channels)

  layout = [("time_embed", model_channels, 4 * model_channels)]
  ch = input_ch = int(channel_mult[0] * model_channels)
  layout.append(("conv", in_channels, ch))
  input_block_chans = [ch]
  ds = 1
  for level, mult in enumerate(channel_mult):
    for _ in range(num_res_blocks):
      layout.append(("res", ch, int(mult * model_channels)))
      ch = int(mult * model_channels)
      if ds in attention_ds:
        layout.append(attention_layer(ch))
      input_block_chans.append(ch)
    if level != len(channel_mult) - 1:
      layout.append(("res_down" if resblock_updown else "downsample", ch))
      input_block_chans.append(ch)
      ds *= 2
  layout += [("res", ch, ch), attention_layer(ch), ("res", ch, ch)]
  for level, mult in list(enumerate(channel_mult))[::-1]:
    for i in range(num_res_blocks + 1):
      ich = input_block_chans.pop()
      layout.append(("res", ch + ich, int(model_channels * mult)))
      ch = int(model_channels * mult)
      if ds in attention_ds:
        layout.append(attention_layer(ch))  # num_heads_upsample = num_heads
      if level and i == num_res_blocks:
        layout.append(("res_up" if resblock_updown else "upsample", ch))
        ds //= 2
  layout.append(("out", input_ch, out_channels))
  return layout


def layout_parameter_count(layout, dims=2, use_scale_shift_norm=False):
  """Parameters of a guided-diffusion layout, layer by layer from PyTorch's definitions."""
  emb = layout[0][2]
  sizes = {
      "time_embed": lambda mc, e: linear(mc, e) + linear(e, e),
      "conv": lambda cin, cout: conv(cin, cout, dims=dims),
      "res": lambda cin, cout: res_block(cin, cout, emb, dims, use_scale_shift_norm),
      "res_down": lambda ch: res_block(ch, ch, emb, dims, use_scale_shift_norm),
      "res_up": lambda ch: res_block(ch, ch, emb, dims, use_scale_shift_norm),
      "attention": lambda ch, heads: attention(ch),  # heads split channels: no parameters
      "downsample": lambda ch: conv(ch, ch, dims=dims),  # with conv_resample
      "upsample": lambda ch: conv(ch, ch, dims=dims),
      "out": lambda ch, cout: norm(ch) + conv(ch, cout, dims=dims),
  }
  return sum(sizes[kind](*args) for kind, *args in layout)


def guided_diffusion_parameter_count(image_size, in_channels, model_channels, out_channels,
                                     num_res_blocks, attention_resolutions, channel_mult,
                                     dims=2, use_scale_shift_norm=False, resblock_updown=False):
  """Parameters of guided-diffusion's UNetModel, following its constructor loop step by step."""
  layout = guided_diffusion_layout(image_size, in_channels, model_channels, out_channels,
                                   num_res_blocks, attention_resolutions, channel_mult,
                                   resblock_updown=resblock_updown)
  return layout_parameter_count(layout, dims, use_scale_shift_norm)


def unet_layout(model):
  """The layers of a memjax UNet in guided-diffusion_layout's terms, read from its modules."""

  def res(block):
    if block.resample is not None:
      return ("res_" + block.resample, block.out_conv.out_features)
    return ("res", block.in_conv.in_features, block.out_conv.out_features)

  def attention_layer(block):
    return ("attention", block.qkv.in_features, block.num_heads)

  def stage(block):
    if isinstance(block, unet.Downsample):
      return [("downsample", block.conv.in_features)]
    layers = [res(block.res_block)]
    if block.attention is not None:
      layers.append(attention_layer(block.attention))
    if isinstance(block.upsample, unet.Upsample):
      layers.append(("upsample", block.upsample.conv.in_features))
    elif block.upsample is not None:
      layers.append(res(block.upsample))
    return layers

  layout = [("time_embed", model.time_embed_in.in_features, model.time_embed_in.out_features),
            ("conv", model.input_conv.in_features, model.input_conv.out_features)]
  for block in model.down_blocks:
    layout += stage(block)
  layout += [res(model.middle_in), attention_layer(model.middle_attention), res(model.middle_out)]
  for block in model.up_blocks:
    layout += stage(block)
  layout.append(("out", model.out_conv.in_features, model.out_conv.out_features))
  return layout


def abstract_unet(**kwargs):
  """A U-Net's structure and parameter shapes without allocating or initialising anything."""
  return nnx.eval_shape(lambda: UNet(**kwargs, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def tiny_model():
  return tiny_unet()


@pytest.mark.parametrize("channels", [1, 5])
def test_2d_output_shape_dtype_and_zero_at_init(channels):
  model = tiny_unet(channels)
  x = images((3, 16, 16, channels))
  out = forward(model, x, jnp.array([0, 10, 999], jnp.int32))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.asarray(out) == 0.0), "the zero-initialised out conv must give exactly zero"


def test_3d_output_shape_dtype_and_zero_at_init():
  model = UNet(in_channels=2, out_channels=3, dims=3, **{**TINY, "channel_mult": (1, 1),
                                                         "image_size": 8,
                                                         "attention_resolutions": (4,)},
               rngs=rngs())
  assert sum(isinstance(node, AttentionBlock) for _, node in nnx.iter_graph(model)) == 4
  assert model.input_conv.kernel.shape == (3, 3, 3, 2, 32)
  x = images((2, 8, 8, 8, 2))
  out = forward(model, x, jnp.array([3, 500], jnp.int32))
  assert out.shape == (2, 8, 8, 8, 3) and out.dtype == jnp.float32
  assert np.all(np.asarray(out) == 0.0)
  out = forward(perturbed(model), x, jnp.array([3, 500], jnp.int32))
  assert np.all(np.isfinite(out)) and np.abs(np.asarray(out)).max() > 0


def test_depends_on_t_and_x_once_the_zero_layers_are_perturbed(tiny_model):
  model = perturbed(tiny_model)
  x = images((2, 16, 16, 1))
  t = jnp.array([5, 5], jnp.int32)
  base = np.asarray(forward(model, x, t))
  assert np.abs(base).max() > 1e-3
  other_t = np.asarray(forward(model, x, jnp.array([5, 700], jnp.int32)))
  np.testing.assert_array_equal(other_t[0], base[0])  # examples do not mix
  assert np.abs(other_t[1] - base[1]).max() > 1e-4, "the output must depend on t"
  other_x = np.asarray(forward(model, x.at[1].multiply(-1.0), t))
  np.testing.assert_array_equal(other_x[0], base[0])
  assert np.abs(other_x[1] - base[1]).max() > 1e-4, "the output must depend on x"


def test_bfloat16_compute_stays_near_float32(tiny_model):
  reference = perturbed(tiny_model)
  low = perturbed(tiny_unet(dtype=jnp.bfloat16))  # same seeds: the same parameters
  x, t = images((2, 16, 16, 1)), jnp.array([5, 900], jnp.int32)
  expected, got = np.asarray(forward(reference, x, t)), forward(low, x, t)
  assert got.dtype == jnp.float32 and low.input_conv.kernel.dtype == jnp.float32
  assert np.abs(np.asarray(got) - expected).max() < 0.05 * np.abs(expected).max()


def convolution_dtypes(function, *args):
  """The element types of every convolution's (input, kernel, output) in `function`'s program."""
  text = jax.jit(function).lower(*args).as_text()
  return [tuple(t.rsplit("x", 1)[-1] for t in types) for types in re.findall(
      r"stablehlo\.convolution.*: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)>", text)]


def test_bfloat16_convolutions_run_in_bfloat16_and_the_output_is_float32(tiny_model):
  x, t = images((2, 16, 16, 1)), jnp.array([5, 900], jnp.int32)
  for model, compute in ((tiny_unet(dtype=jnp.bfloat16), "bf16"), (tiny_model, "f32")):
    graphdef, state = nnx.split(model)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {np.dtype(np.float32)}
    types = convolution_dtypes(lambda s, g=graphdef: nnx.merge(g, s)(x, t), state)
    assert len(types) > 5
    # All but the zero-initialised output convolution, which stays float32.
    assert types[:-1] == [(compute,) * 3] * (len(types) - 1), types
    assert types[-1] == ("f32",) * 3


def numpy_group_norm(x, groups, eps=1e-5):
  n, c = x.shape[0], x.shape[-1]
  grouped = x.reshape(n, -1, groups, c // groups)
  mean = grouped.mean(axis=(1, 3), keepdims=True)
  var = grouped.var(axis=(1, 3), keepdims=True)
  return ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape)


@pytest.mark.parametrize("num_head_channels, num_heads, new_order, heads", [
    (32, 1, False, 2),   # heads of 32 channels
    (-1, 4, False, 4),   # guided-diffusion's default: 4 heads whatever the channels
    (-1, 4, True, 4),    # use_new_attention_order: QKVAttention
    (16, 3, True, 4),    # num_heads is ignored when num_head_channels is set
])
def test_attention_block_is_guided_diffusions_attention(num_head_channels, num_heads, new_order,
                                                        heads):
  block = perturbed(AttentionBlock(64, num_head_channels, num_heads=num_heads,
                                   use_new_attention_order=new_order, dtype=jnp.float32,
                                   rngs=rngs()), scale=0.3)
  assert block.num_heads == heads
  x = np.asarray(images((2, 4, 4, 64)), np.float64)
  got = nnx.jit(lambda block, x: block(x))(block, x.astype(np.float32))
  # guided-diffusion, channels first, qkv (B, 3C, T). QKVAttentionLegacy reshapes it to
  # (B * heads, 3 * ch, T) and splits q, k, v of ch channels each; QKVAttention splits q, k, v of
  # C channels first and views each as (B * heads, ch, T). Weights softmax(q^T k / sqrt(ch)).
  ch = 64 // heads
  norm = block.norm
  h = numpy_group_norm(x, 32) * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...])
  h = h.reshape(2, 16, 64)
  qkv = h @ np.asarray(block.qkv.kernel[...]) + np.asarray(block.qkv.bias[...])
  qkv = qkv.transpose(0, 2, 1)
  if new_order:
    q, k, v = (part.reshape(2 * heads, ch, 16) for part in np.split(qkv, 3, axis=1))
  else:
    q, k, v = np.split(qkv.reshape(2 * heads, 3 * ch, 16), 3, axis=1)
  logits = np.einsum("bct,bcs->bts", q, k) / np.sqrt(ch)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum("bts,bcs->bct", weights, v).reshape(2, 64, 16).transpose(0, 2, 1)
  out = attended @ np.asarray(block.proj_out.kernel[...]) + np.asarray(block.proj_out.bias[...])
  np.testing.assert_allclose(got, x + out.reshape(x.shape), atol=1e-4)


def test_downsample_windows_are_centred_on_even_pixels():
  down = unet.Downsample(1, dims=2, dtype=jnp.float32, rngs=rngs())
  centre_tap = np.zeros((3, 3, 1, 1), np.float32)
  centre_tap[1, 1] = 1.0
  down.conv.kernel[...] = centre_tap
  down.conv.bias[...] = np.zeros(1, np.float32)
  x = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
  np.testing.assert_array_equal(np.asarray(down(x)), x[:, ::2, ::2])  # PyTorch's padding=1


def test_timestep_embedding_is_guided_diffusions():
  t = np.array([0, 1, 17, 999])
  dim = 7  # odd: a zero column is appended
  half = dim // 2
  frequencies = np.exp(-math.log(10000) * np.arange(half) / half)
  angles = t[:, None] * frequencies[None, :]
  expected = np.concatenate([np.cos(angles), np.sin(angles), np.zeros((4, 1))], axis=1)
  got = unet.timestep_embedding(jnp.asarray(t, jnp.int32), dim)
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4)


def test_parameter_count_of_a_tiny_config_by_hand(tiny_model):
  emb = 4 * 32
  expected = (
      linear(32, emb) + linear(emb, emb)                                  # timestep embedding
      + conv(1, 32)                                                       # input conv
      + res_block(32, 32, emb) + conv(32, 32)                             # 16x16, Downsample
      + res_block(32, 64, emb) + attention(64)                            # 8x8
      + res_block(64, 64, emb) + attention(64) + res_block(64, 64, emb)   # middle
      + res_block(64 + 64, 64, emb) + attention(64)                       # up 8x8, skips 64, 32
      + res_block(64 + 32, 64, emb) + attention(64) + conv(64, 64)        # ... and Upsample
      + res_block(64 + 32, 32, emb) + res_block(32 + 32, 32, emb)         # up 16x16, skips 32, 32
      + norm(32) + conv(32, 1))                                           # out
  assert expected == 701_345
  assert unet.count_parameters(tiny_model) == expected
  assert guided_diffusion_parameter_count(16, 1, 32, 1, 1, (8,), (1, 2)) == expected


# The authors' flags over guided-diffusion's model_and_diffusion_defaults(), for 256x256 images.
PAPER = dict(image_size=256, model_channels=64, num_res_blocks=3,
             channel_mult=(1, 1, 2, 2, 4, 4), attention_resolutions=(16, 8), num_heads=4,
             num_head_channels=-1)


def test_the_paper_configs_unet_is_guided_diffusions_layer_for_layer():
  from configs import cxr_ddpm  # pylint: disable=g-import-not-at-top
  from memjax.train import ddpm  # pylint: disable=g-import-not-at-top
  options = cxr_ddpm.get_config().model
  model = nnx.eval_shape(lambda: ddpm.make_model(options, (256, 256, 1), nnx.Rngs(0)))
  expected = guided_diffusion_layout(in_channels=1, out_channels=1, **PAPER)
  assert unet_layout(model) == expected
  count = layout_parameter_count(expected, use_scale_shift_norm=True)
  assert unet.count_parameters(model) == count == 41_121_025  # chest x-rays: 1 channel
  # The layout, spelled out: 6 levels of 3 ResBlocks; attention where the maps are 16x16 (256
  # channels) and 8x8 (256), and in the middle, each with 4 heads; 5 down- and 5 upsamplings.
  kinds = [entry[0] for entry in expected]
  assert kinds.count("res") == 6 * 3 + 2 + 6 * 4 and kinds.count("attention") == 2 * 3 + 1 + 2 * 4
  assert {entry for entry in expected if entry[0] == "attention"} == {("attention", 256, 4)}
  assert kinds.count("downsample") == kinds.count("upsample") == 5
  # BraTS (5 channels): only the input and output convs differ, by 2 * 4 * 9 * 64 + 4.
  assert layout_parameter_count(guided_diffusion_layout(in_channels=5, out_channels=5, **PAPER),
                                use_scale_shift_norm=True) == 41_125_637


@pytest.mark.parametrize("resblock_updown, num_heads, num_head_channels", [
    (False, 4, -1), (True, 2, -1), (True, 1, 32)])
def test_layout_and_count_follow_guided_diffusions_switches(resblock_updown, num_heads,
                                                            num_head_channels):
  config = dict(image_size=32, model_channels=32, num_res_blocks=2, channel_mult=(1, 2, 2),
                attention_resolutions=(16, 8), num_heads=num_heads,
                num_head_channels=num_head_channels)
  model = abstract_unet(in_channels=3, out_channels=3, use_scale_shift_norm=True,
                        resblock_updown=resblock_updown, **config)
  expected = guided_diffusion_layout(in_channels=3, out_channels=3,
                                     resblock_updown=resblock_updown, **config)
  assert unet_layout(model) == expected
  assert unet.count_parameters(model) == layout_parameter_count(expected,
                                                                use_scale_shift_norm=True)


@pytest.mark.parametrize("dims, use_scale_shift_norm", [(2, True), (3, False)])
def test_parameter_count_of_other_configs(dims, use_scale_shift_norm):
  config = dict(image_size=32, model_channels=32, num_res_blocks=2, channel_mult=(1, 2, 2),
                attention_resolutions=(8,), dims=dims, use_scale_shift_norm=use_scale_shift_norm)
  model = abstract_unet(in_channels=4, out_channels=3, num_head_channels=32, **config)
  assert unet.count_parameters(model) == guided_diffusion_parameter_count(
      in_channels=4, out_channels=3, **config)


def torch_guided_diffusion_unet(torch, model, x, t, *, image_size, model_channels, channel_mult,
                                num_res_blocks, attention_resolutions, num_heads,
                                num_head_channels, use_scale_shift_norm, resblock_updown,
                                use_new_attention_order):
  """guided-diffusion's UNetModel.forward (2D, channels first), transcribed to torch functions.

  The constructor loop and every block's forward follow guided_diffusion/unet.py and nn.py; the
  weights are read from memjax's `model`, layer by layer in the order that loop builds them.
  """
  f = torch.nn.functional

  def tensor(value):
    return torch.from_numpy(np.array(value, np.float32))

  def conv(layer, h, stride=1):  # conv_nd(2, ..., padding=k // 2): HWIO -> OIHW
    kernel = tensor(layer.kernel[...]).permute(3, 2, 0, 1)
    return f.conv2d(h, kernel, tensor(layer.bias[...]), stride, kernel.shape[-1] // 2)

  def dense(layer, h):  # linear, and conv_nd(1, ..., 1) on (B, C, T) with h transposed
    return h @ tensor(layer.kernel[...]) + tensor(layer.bias[...])

  def normalization(layer, h):  # GroupNorm32(32, channels)
    return f.group_norm(h.float(), 32, tensor(layer.scale[...]), tensor(layer.bias[...]), 1e-5)

  def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

  def upsample_nearest(h):
    return f.interpolate(h, scale_factor=2, mode="nearest")

  def res_block(block, h, emb, up=False, down=False):
    x = h
    h = f.silu(normalization(block.in_norm, h))
    if up or down:  # h_upd, x_upd: Upsample / Downsample(use_conv=False)
      resample = upsample_nearest if up else (lambda v: f.avg_pool2d(v, 2, 2))
      h, x = resample(h), resample(x)
    h = conv(block.in_conv, h)
    emb_out = dense(block.emb_proj, f.silu(emb))[..., None, None]
    if use_scale_shift_norm:
      scale, shift = torch.chunk(emb_out, 2, dim=1)
      h = normalization(block.out_norm, h) * (1 + scale) + shift
    else:
      h = normalization(block.out_norm, h + emb_out)
    h = conv(block.out_conv, f.silu(h))
    return (x if block.skip is None else conv(block.skip, x)) + h

  def attention_block(block, h, channels):
    heads = num_heads if num_head_channels == -1 else channels // num_head_channels
    b, c, *spatial = h.shape
    h = h.reshape(b, c, -1)
    qkv = dense(block.qkv, normalization(block.norm, h).transpose(1, 2)).transpose(1, 2)
    ch = c // heads
    scale = 1 / math.sqrt(math.sqrt(ch))
    if use_new_attention_order:  # QKVAttention
      q, k, v = (part.reshape(b * heads, ch, -1) for part in qkv.chunk(3, dim=1))
    else:  # QKVAttentionLegacy
      q, k, v = qkv.reshape(b * heads, ch * 3, -1).split(ch, dim=1)
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, qkv.shape[-1])
    out = dense(block.proj_out, a.transpose(1, 2)).transpose(1, 2)
    return (h + out).reshape(b, c, *spatial)

  attention_ds = [image_size // res for res in attention_resolutions]
  down, up = iter(model.down_blocks), iter(model.up_blocks)
  emb = timestep_embedding(t, model_channels)
  emb = dense(model.time_embed_out, f.silu(dense(model.time_embed_in, emb)))
  h = conv(model.input_conv, x)
  ch = int(channel_mult[0] * model_channels)
  hs = [h]
  ds = 1
  for level, mult in enumerate(channel_mult):
    for _ in range(num_res_blocks):
      stage = next(down)
      h = res_block(stage.res_block, h, emb)
      ch = int(mult * model_channels)
      if ds in attention_ds:
        h = attention_block(stage.attention, h, ch)
      hs.append(h)
    if level != len(channel_mult) - 1:
      stage = next(down)
      h = (res_block(stage.res_block, h, emb, down=True) if resblock_updown
           else conv(stage.conv, h, stride=2))
      hs.append(h)
      ds *= 2
  h = res_block(model.middle_in, h, emb)
  h = attention_block(model.middle_attention, h, ch)
  h = res_block(model.middle_out, h, emb)
  for level, mult in list(enumerate(channel_mult))[::-1]:
    for i in range(num_res_blocks + 1):
      stage = next(up)
      h = res_block(stage.res_block, torch.cat([h, hs.pop()], dim=1), emb)
      ch = int(model_channels * mult)
      if ds in attention_ds:
        h = attention_block(stage.attention, h, ch)
      if level and i == num_res_blocks:
        h = (res_block(stage.upsample, h, emb, up=True) if resblock_updown
             else conv(stage.upsample.conv, upsample_nearest(h)))
        ds //= 2
  return conv(model.out_conv, f.silu(normalization(model.out_norm, h)))


@pytest.mark.parametrize("use_scale_shift_norm, resblock_updown, use_new_attention_order", [
    (True, False, False),   # guided-diffusion's defaults, as the paper ran them
    (False, True, True),
])
def test_outputs_match_a_torch_transcription_of_guided_diffusion(
    use_scale_shift_norm, resblock_updown, use_new_attention_order):
  torch = pytest.importorskip("torch")
  config = dict(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(16, 8), num_heads=4, num_head_channels=-1,
                use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
                use_new_attention_order=use_new_attention_order)
  model = perturbed(UNet(in_channels=3, out_channels=3, **config, rngs=rngs()), scale=0.1)
  x = images((2, 16, 16, 3))
  t = jnp.array([3, 700], jnp.int32)
  got = np.asarray(forward(model, x, t))
  with torch.no_grad():
    expected = torch_guided_diffusion_unet(
        torch, model, torch.from_numpy(np.array(x)).permute(0, 3, 1, 2),
        torch.from_numpy(np.array(t)), **config).permute(0, 2, 3, 1).numpy()
  assert np.abs(expected).max() > 0.1  # every layer contributes once perturbed
  np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected).max() + 1e-5)


def test_dropout_only_when_not_deterministic():
  model = perturbed(tiny_unet(dropout=0.5))
  x = images((2, 16, 16, 1))
  t = jnp.array([3, 400], jnp.int32)
  evaluated = np.asarray(forward(model, x, t))
  np.testing.assert_array_equal(np.asarray(forward(model, x, t, deterministic=True)), evaluated)
  trained_once = np.asarray(forward(model, x, t, deterministic=False))
  trained_twice = np.asarray(forward(model, x, t, deterministic=False))
  assert np.abs(trained_once - evaluated).max() > 1e-4, "dropout must act in training"
  assert np.abs(trained_twice - trained_once).max() > 1e-4, "each call must draw a new mask"
  np.testing.assert_array_equal(np.asarray(forward(model, x, t)), evaluated)
  no_dropout = tiny_unet()
  assert not any(isinstance(node, nnx.Dropout) for _, node in nnx.iter_graph(no_dropout))


@pytest.mark.parametrize("resolutions, num_res_blocks, expected", [
    ((8,), 2, 2 + 3 + 1),           # the 8x8 level, down and up, and the middle
    ((16, 4), 1, (1 + 2) * 2 + 1),
    ((), 1, 1),                     # the middle block always attends
    ((16, 8, 4), 1, (1 + 2) * 3 + 1),
])
def test_attention_at_the_configured_resolutions(resolutions, num_res_blocks, expected):
  model = abstract_unet(in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 1, 2),
                        num_res_blocks=num_res_blocks, attention_resolutions=resolutions,
                        num_head_channels=32, image_size=16)
  assert sum(isinstance(node, AttentionBlock) for _, node in nnx.iter_graph(model)) == expected


def test_attention_runs_on_feature_maps_of_the_configured_side(monkeypatch):
  sides = []
  original = AttentionBlock.__call__

  def recording(self, x):
    sides.append(x.shape[1:-1])
    return original(self, x)

  monkeypatch.setattr(AttentionBlock, "__call__", recording)
  model = tiny_unet(channel_mult=(1, 1, 2), attention_resolutions=(16,))
  jax.eval_shape(lambda x, t: model(x, t), images((1, 16, 16, 1)), jnp.array([1], jnp.int32))
  assert sides == [(16, 16), (4, 4), (16, 16), (16, 16)]  # down, middle, up (num_res_blocks + 1)


@pytest.mark.parametrize("overrides, message", [
    (dict(model_channels=48), "GroupNorm"),            # 48 channels in 32 groups
    (dict(model_channels=16), "GroupNorm"),            # skips concatenate 32 + 16 = 48 channels
    (dict(num_head_channels=48), "num_head_channels"),
    (dict(num_head_channels=-1, num_heads=3), "num_heads"),   # 3 heads cannot split 64 channels
    (dict(num_head_channels=-1, num_heads=0), "num_heads"),
    (dict(attention_resolutions=(12,)), "attention_resolutions"),
    (dict(dims=1), "dims"),
    (dict(image_size=15), "divisible"),
])
def test_configuration_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    abstract_unet(**{**TINY, "in_channels": 1, "out_channels": 1, **overrides})


def test_input_errors(tiny_model):
  with pytest.raises(ValueError, match="expected inputs"):
    tiny_model(jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError, match="divisible"):
    tiny_model(jnp.zeros((1, 15, 16, 1)), jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError, match="timestep"):
    tiny_model(jnp.zeros((2, 16, 16, 1)), jnp.zeros((1,), jnp.int32))


def test_jitted_gradient_steps_on_a_sharded_batch_change_the_parameters():
  mesh = parallel.data_mesh(4)
  model = tiny_unet()
  # The model's state must live on the mesh (here replicated) before the optimizer is built.
  nnx.update(model, jax.device_put(nnx.state(model), parallel.replicated(mesh)))
  with jax.set_mesh(mesh):
    optimizer = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)
  before = nnx.clone(nnx.state(model, nnx.Param))

  @nnx.jit
  def train_step(model, optimizer, x, t, target):
    def loss_fn(model):
      return jnp.mean(jnp.square(model(x, t, deterministic=False) - target))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  batch = parallel.rows_sharding(mesh)
  x = jax.device_put(images((4, 16, 16, 1)), batch)
  target = jax.device_put(images((4, 16, 16, 1), seed=1), batch)
  t = jax.device_put(jnp.array([0, 10, 100, 999], jnp.int32), batch)
  with jax.set_mesh(mesh):  # the mesh's axes are explicit: gradients need it in context
    losses = [float(train_step(model, optimizer, x, t, target)) for _ in range(3)]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  after = nnx.state(model, nnx.Param)
  # Step one moves only the out conv (everything before it sees a zero kernel); later steps
  # reach the rest of the network, the zero-initialised layers included.
  for path in [("out_conv", "kernel"), ("input_conv", "kernel"), ("time_embed_in", "kernel"),
               ("middle_attention", "proj_out", "kernel"), ("middle_out", "out_conv", "kernel")]:
    old, new = before, after
    for name in path:
      old, new = old[name], new[name]
    assert np.abs(np.asarray(new[...]) - np.asarray(old[...])).max() > 0, path
