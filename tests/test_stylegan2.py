"""StyleGAN2: layers against float64 numpy, networks against stylegan2-ada-pytorch, training.

`tests/data/stylegan2_reference.npz` holds a small G and D (16x16, 2 channels) drawn at random
in NVlabs' stylegan2-ada-pytorch, inputs and the reference's outputs, and, for four
configurations of the outside check of issue 20, the float64 gradients that R1 and path-length
regularization train on (written by tools/make_stylegan2_reference.py); the parity tests run from
that file alone. The training tests
use 8x8 images and tiny networks so that their steps compile in seconds.
"""

import pathlib
import re

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import parallel
from memjax.models import stylegan2 as sg
from memjax.models import stylegan2_ops as ops
from memjax.train import inputs as inputs_lib
from memjax.train import loop
from memjax.train import sampling
from memjax.train import stylegan2
from stylegan2_setup import make_config, SIZE, training_images  # pylint: disable=g-multiple-import

REFERENCE = pathlib.Path(__file__).parent / "data" / "stylegan2_reference.npz"


# ----------------------------------------------------------------------------------------------
# Layers against float64 numpy.


def numpy_upfirdn2d(x, taps, up, down, padding, gain, flip_filter=False):
  """The definition, in float64: zero insertion, padding (negative crops), 2D filter, decimation."""
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  upsampled = np.zeros((n, h * up, w * up, c))
  upsampled[:, ::up, ::up] = x
  x0, x1, y0, y1 = padding
  x = np.pad(upsampled, ((0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0)), (0, 0)))
  x = x[:, max(-y0, 0):x.shape[1] - max(-y1, 0), max(-x0, 0):x.shape[2] - max(-x1, 0)]
  f = np.outer(taps, taps) * gain
  if not flip_filter:
    f = f[::-1, ::-1]
  k = f.shape[0]
  out_h, out_w = x.shape[1] - k + 1, x.shape[2] - k + 1
  out = np.zeros((n, out_h, out_w, c))
  for i in range(k):
    for j in range(k):
      out += f[i, j] * x[:, i:i + out_h, j:j + out_w]
  return out[:, ::down, ::down]


@pytest.mark.parametrize("up,down,padding,gain", [
    (1, 1, (1, 2, 0, 3), 1.0),
    (2, 1, (2, 1, 2, 1), 4.0),  # upsample2d
    (1, 2, (1, 1, 1, 1), 1.0),  # the discriminator's 1x1 skip
    (2, 1, (-1, 2, 1, -2), 4.0),  # negative padding crops
])
def test_fir_filtering_matches_float64_numpy(rng, up, down, padding, gain):
  x = rng.standard_normal((2, 9, 7, 3)).astype(np.float32)
  taps = rng.uniform(0.1, 1.0, 4)  # Asymmetric: a wrong flip would show.
  got = ops.upfirdn2d(jnp.asarray(x), tuple(taps), up=up, down=down, padding=padding, gain=gain)
  want = numpy_upfirdn2d(x, taps, up, down, padding, gain)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def test_resample_filter_is_normalised_1_3_3_1():
  taps = np.asarray(ops.fir_taps())
  np.testing.assert_allclose(np.outer(taps, taps), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)


def numpy_conv(x, w, padding):
  """Correlation of (N, H, W, I) with [O, I, k, k], zero padding, float64."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  k = w.shape[2]
  out_h, out_w = x.shape[1] - k + 1, x.shape[2] - k + 1
  return sum(np.einsum("nhwi,oi->nhwo", x[:, i:i + out_h, j:j + out_w], w[:, :, i, j])
             for i in range(k) for j in range(k))


def numpy_conv_transpose2d(x, w, stride, padding):
  """PyTorch's conv_transpose2d by its definition, in float64: every input pixel scatters w."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)  # w [in, out, k, k]
  n, h, width, _ = x.shape
  k = w.shape[2]
  full = np.zeros((n, (h - 1) * stride + k, (width - 1) * stride + k, w.shape[1]))
  for i in range(h):
    for j in range(width):
      full[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
          "nc,cokl->nklo", x[:, i, j], w)
  return full[:, padding:full.shape[1] - padding, padding:full.shape[2] - padding]


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_transposed_convolution_both_ways_matches_float64_and_each_other(rng, padding):
  """XLA's gradient and the rewritten one (the CPU's, through the adjoint): the same values,
  gradients and gradients of gradients (R1 and path length differentiate twice)."""
  x = jnp.asarray(rng.standard_normal((2, 5, 4, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 4, 3, 3)), jnp.float32)
  ways = {explicit: (lambda x, w, explicit=explicit: ops.conv_transpose2d(
      x, w, 2, padding, rewritten_gradient=explicit)) for explicit in (True, False)}
  expected = numpy_conv_transpose2d(x, w, 2, padding)
  for f in ways.values():
    np.testing.assert_allclose(np.asarray(f(x, w)), expected, atol=1e-4)

  def loss(f):
    return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

  def penalty(f):  # |d loss / d x|^2, differentiated again with respect to w
    return lambda w, x: jnp.sum(jax.grad(loss(f))(x, w) ** 2)

  grads = {e: jax.grad(loss(f), (0, 1))(x, w) for e, f in ways.items()}
  second = {e: jax.grad(penalty(f))(w, x) for e, f in ways.items()}
  for a, b in zip(grads[True], grads[False]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(second[True]), np.asarray(second[False]), atol=1e-3,
                             rtol=1e-5)


@pytest.mark.parametrize("padding,size", [(0, 9), (1, 8), (1, 9)])
def test_strided_convolution_rewritten_gradients_match_xlas(rng, padding, size):
  """The discriminator's stride-2 convolution: values, gradients and gradients of gradients."""
  x = jnp.asarray(rng.standard_normal((2, size, size - 1, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 3, 3, 3)), jnp.float32)
  ways = {rewritten: (lambda x, w, rewritten=rewritten: ops.conv2d(
      x, w, 2, padding, rewritten_gradient=rewritten)) for rewritten in (True, False)}
  expected = numpy_conv(np.asarray(x), np.asarray(w), padding)[:, ::2, ::2]
  for f in ways.values():
    np.testing.assert_allclose(np.asarray(f(x, w)), expected, atol=1e-4)

  def loss(f):
    return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

  def penalty(f):  # R1's shape: |d loss / d x|^2, differentiated with respect to w and x
    return lambda w, x: jnp.sum(jnp.cos(jax.grad(loss(f))(x, w)))

  grads = {r: jax.grad(loss(f), (0, 1))(x, w) for r, f in ways.items()}
  second = {r: jax.grad(penalty(f), (0, 1))(w, x) for r, f in ways.items()}
  for a, b in zip((*grads[True], *second[True]), (*grads[False], *second[False])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3, rtol=1e-5)


def test_demodulated_weights_have_unit_norm_per_output_feature(rng):
  n, cin, cout = 3, 5, 4
  x = rng.standard_normal((n, 6, 6, cin)).astype(np.float32)
  weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
  styles = rng.uniform(0.2, 2.0, (n, cin)).astype(np.float32)
  got = np.asarray(ops.modulated_conv2d(jnp.asarray(x), jnp.asarray(weight),
                                        jnp.asarray(styles), padding=1))
  for i in range(n):
    # The per-image weights: modulated by the styles, each output feature scaled to unit norm.
    modulated = weight.astype(np.float64) * styles[i].astype(np.float64)[None, :, None, None]
    norms = np.sqrt(np.sum(modulated**2, axis=(1, 2, 3)) + 1e-8)
    demodulated = modulated / norms[:, None, None, None]
    np.testing.assert_allclose(np.sqrt(np.sum(demodulated**2, axis=(1, 2, 3))), 1.0, rtol=1e-9)
    np.testing.assert_allclose(got[i], numpy_conv(x[i:i + 1], demodulated, 1)[0], atol=1e-4)


def test_equalized_learning_rate_scales(rng):
  rngs = nnx.Rngs(0)
  mapping = sg.FullyConnected(256, 64, lr_multiplier=0.01, bias_init=0.5, rngs=rngs)
  assert mapping.weight_gain == pytest.approx(0.01 / 16) and mapping.bias_gain == 0.01
  stored = np.asarray(mapping.weight[...])
  assert np.std(stored) == pytest.approx(100.0, rel=0.05)  # N(0, 1) / lr_multiplier.
  x = rng.standard_normal((4, 256)).astype(np.float32)
  want = x.astype(np.float64) @ (stored.astype(np.float64) * 0.01 / 16).T + 0.5 * 0.01
  np.testing.assert_allclose(np.asarray(mapping(jnp.asarray(x))), want, atol=1e-5)

  conv = sg.Conv2dLayer(32, 8, 3, activation="lrelu", rngs=rngs)
  assert conv.weight_gain == pytest.approx(1 / np.sqrt(32 * 9))
  assert np.std(np.asarray(conv.weight[...])) == pytest.approx(1.0, rel=0.1)
  image = rng.standard_normal((2, 5, 5, 32)).astype(np.float32)
  linear = numpy_conv(image, np.asarray(conv.weight[...], np.float64) * conv.weight_gain, 1)
  want = np.where(linear >= 0, linear, 0.2 * linear) * np.sqrt(2)
  np.testing.assert_allclose(np.asarray(conv(jnp.asarray(image))), want, atol=1e-4)


def test_minibatch_stddev_groups_images_as_the_reference(rng):
  x = rng.standard_normal((8, 2, 2, 3)).astype(np.float32)
  got = np.asarray(sg.minibatch_stddev(jnp.asarray(x), group_size=4))
  assert got.shape == (8, 2, 2, 4)
  np.testing.assert_array_equal(got[..., :3], x)
  for i in range(8):
    group = x[i % 2::2].astype(np.float64)  # Image i is in group i mod (N / G).
    want = np.mean(np.sqrt(np.var(group, axis=0) + 1e-8))
    np.testing.assert_allclose(got[i, ..., 3], want, rtol=1e-5)
  with pytest.raises(ValueError, match="divisible"):
    sg.minibatch_stddev(jnp.asarray(x[:6]), group_size=4)


# ----------------------------------------------------------------------------------------------
# Parity with stylegan2-ada-pytorch.


@pytest.fixture(scope="module")
def reference():
  with np.load(REFERENCE) as stored:
    return dict(stored)


def reference_models(reference):
  arguments = {k: int(reference[k]) for k in (
      "z_dim", "w_dim", "img_resolution", "img_channels", "num_mapping_layers", "channel_base",
      "channel_max", "conv_clamp", "mbstd_group_size")}
  common = dict(img_resolution=arguments["img_resolution"],
                img_channels=arguments["img_channels"], channel_base=arguments["channel_base"],
                channel_max=arguments["channel_max"], conv_clamp=arguments["conv_clamp"])
  generator = sg.Generator(z_dim=arguments["z_dim"], w_dim=arguments["w_dim"],
                           mapping_layers=arguments["num_mapping_layers"], rngs=nnx.Rngs(0),
                           **common)
  discriminator = sg.Discriminator(mbstd_group_size=arguments["mbstd_group_size"],
                                   rngs=nnx.Rngs(1), **common)
  return generator, discriminator


def test_generator_and_discriminator_match_stylegan2_ada_pytorch(reference):
  generator, discriminator = reference_models(reference)
  assert generator.num_ws == int(reference["num_ws"])
  sg.load_torch_state_dict(reference, generator=generator, discriminator=discriminator)
  psi = float(reference["truncation_psi"])

  @nnx.jit  # One compilation rather than hundreds of small ones.
  def run(generator, discriminator, z, ws, ws_mix, img, x_real):
    to_nhwc = lambda x: jnp.transpose(x, (0, 2, 3, 1))
    to_nchw = lambda x: jnp.transpose(x, (0, 3, 1, 2))
    return {
        "ws": generator.mapping(z),
        "ws_trunc": generator.mapping(z, psi),
        "img": to_nchw(generator(z, noise_mode="const")),
        "img_trunc": to_nchw(generator(z, truncation_psi=psi, noise_mode="const")),
        "img_nonoise": to_nchw(generator.synthesis(ws, "none")),
        "img_mix": to_nchw(generator.synthesis(ws_mix, "const")),
        "d_fake": discriminator(to_nhwc(img)),
        "d_real": discriminator(to_nhwc(x_real)),
    }

  outputs = run(generator, discriminator,
                *(jnp.asarray(reference[k]) for k in ("z", "ws", "ws_mix", "img", "x_real")))
  for name, got in outputs.items():
    want = reference[name]
    np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, atol=1e-4, rtol=0,
                               err_msg=name)
  # The outputs are not trivially small: a wrong layer would show far above the tolerance.
  assert np.abs(reference["img"]).max() > 1 and np.ptp(reference["d_fake"]) > 0.1


GRADIENT_CASES = ("rgb32", "gray64", "mbstd2_clamp1", "paper64")


def gradient_case(reference, case):
  """The memjax G and D of a gradient case, loaded with its state dicts, and its arrays."""
  prefix = f"grad/{case}/"
  arrays = {k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}
  common = dict(img_resolution=int(arrays["img_resolution"]),
                img_channels=int(arrays["img_channels"]),
                channel_base=int(arrays["channel_base"]), channel_max=int(arrays["channel_max"]),
                conv_clamp=int(arrays["conv_clamp"]))
  generator = sg.Generator(z_dim=int(arrays["z_dim"]), w_dim=int(arrays["w_dim"]),
                           mapping_layers=int(arrays["num_mapping_layers"]), rngs=nnx.Rngs(0),
                           **common)
  discriminator = sg.Discriminator(mbstd_group_size=int(arrays["mbstd_group_size"]),
                                   mbstd_num_channels=int(arrays["mbstd_num_channels"]),
                                   rngs=nnx.Rngs(1), **common)
  sg.load_torch_state_dict(arrays, generator=generator, discriminator=discriminator)
  return generator, discriminator, arrays


def relative_error(got, want):
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_regularizer_gradients_match_stylegan2_ada_pytorch_in_float64(reference, case):
  """R1's and the path length's gradients against the reference, run in float64 (issue 20).

  The reference's inputs keep every pre-activation away from leaky ReLU's and the clamp's kinks
  (tools/make_stylegan2_reference.py): there, the exact gradient is the one any correct float32
  implementation computes to a few 1e-7.
  """
  generator, discriminator, arrays = gradient_case(reference, case)
  assert float(arrays["min_kink_margin"]) >= 1e-6
  to_nhwc = lambda x: jnp.transpose(jnp.asarray(x), (0, 2, 3, 1))

  @nnx.jit
  def gradients(generator, discriminator, x_real, ws, pl_noise):
    def penalty(discriminator):
      input_grad = jax.grad(lambda x: discriminator(x).sum())(x_real)
      return jnp.sum(jnp.square(input_grad)), input_grad

    def path_lengths(generator):
      pl_grad = jax.grad(lambda w: jnp.sum(generator.synthesis(w, "const") * pl_noise))(ws)
      return jnp.sum(jnp.sqrt(jnp.mean(jnp.sum(jnp.square(pl_grad), 2), 1))), pl_grad

    (_, input_grad), r1_grads = nnx.value_and_grad(penalty, has_aux=True)(discriminator)
    (_, pl_grad), pl_param_grads = nnx.value_and_grad(path_lengths, has_aux=True)(generator)
    img_param_grads = nnx.grad(
        lambda generator: jnp.sum(generator.synthesis(ws, "const") * pl_noise))(generator)
    return (jnp.transpose(input_grad, (0, 3, 1, 2)), pl_grad, r1_grads, pl_param_grads,
            img_param_grads)

  input_grad, pl_grad, r1_grads, pl_param_grads, img_param_grads = gradients(
      generator, discriminator, to_nhwc(arrays["x_real"]), jnp.asarray(arrays["ws"]),
      to_nhwc(arrays["pl_noise"]))
  assert relative_error(input_grad, arrays["d_input_grad"]) <= 1e-5
  assert relative_error(pl_grad, arrays["pl_grad"]) <= 1e-5
  assert_parameter_gradients(r1_grads, arrays, "r1.")
  if case == "paper64":  # The generator's parameters, second and first order.
    assert_parameter_gradients(pl_param_grads, arrays, "pl_param.")
    assert_parameter_gradients(img_param_grads, arrays, "img_param.")


def assert_parameter_gradients(grads, arrays, prefix):
  """Each reference gradient `prefix<name>` against memjax's, relative to its layer's largest.

  Relative to the largest value of the layer's gradients (weight and bias together): a bias's
  gradient sums the whole batch's second-order terms, whose float32 rounding is about 1e-5 of
  the bias gradient's own, smaller, largest value.
  """
  grads = {".".join(str(p) for p in path): v
           for path, v in nnx.iter_graph(grads) if isinstance(v, nnx.Variable)}
  names = [k[len(prefix):] for k in arrays if k.startswith(prefix)]
  assert names and set(names) <= set(grads)
  scale = {}
  for name in names:
    layer = name.rsplit(".", 1)[0]
    scale[layer] = max(scale.get(layer, 0.0), float(np.abs(arrays[prefix + name]).max()))
  for name in names:
    want = arrays[prefix + name]
    got = np.asarray(grads[name][...], np.float64)
    if not np.any(want):  # A parameter the differentiated value does not depend on.
      assert not np.any(got), name
      continue
    assert np.abs(got - want).max() <= 1e-5 * scale[name.rsplit(".", 1)[0]], name


def test_loading_names_what_does_not_fit(reference):
  generator, discriminator = reference_models(reference)
  state = {k[2:]: v for k, v in reference.items() if k.startswith("G.")}
  del state["synthesis.b8.conv0.weight"]
  with pytest.raises(ValueError, match="synthesis.b8.conv0.weight"):
    generator.load_torch_state_dict(state)
  state = {k[2:]: v for k, v in reference.items() if k.startswith("D.")}
  state["b4.fc.weight"] = state["b4.fc.weight"][:, :-1]
  with pytest.raises(ValueError, match="b4.fc.weight"):
    discriminator.load_torch_state_dict(state)
  state["b4.fc.weight"] = reference["D.b4.fc.weight"]
  state["mapping.embed.weight"] = np.zeros((2, 2), np.float32)
  with pytest.raises(ValueError, match="class conditioning"):
    discriminator.load_torch_state_dict(state)


# ----------------------------------------------------------------------------------------------
# Training.

def convolution_dtypes(function, *args):
  """The element types of every convolution's (input, kernel, output) in `function`'s program."""
  text = jax.jit(function).lower(*args).as_text()
  return [tuple(t.rsplit("x", 1)[-1] for t in types) for types in re.findall(
      r"stablehlo\.convolution.*: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)>", text)]


def test_bfloat16_generator_and_discriminator_compute_in_bfloat16_near_float32():
  common = dict(img_resolution=16, img_channels=2, channel_base=128, channel_max=16,
                conv_clamp=256)
  z = jax.random.normal(jax.random.key(0), (4, 16))
  outputs = {}
  for dtype, compute in ((jnp.float32, "f32"), (jnp.bfloat16, "bf16")):
    # The same seeds: the same float32 parameters.
    generator = sg.Generator(z_dim=16, w_dim=16, mapping_layers=2, dtype=dtype,
                             rngs=nnx.Rngs(0), **common)
    discriminator = sg.Discriminator(mbstd_group_size=2, dtype=dtype, rngs=nnx.Rngs(1), **common)
    for model in (generator, discriminator):
      assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
          np.dtype(np.float32)}
    g_def, g_state = nnx.split(generator)
    d_def, d_state = nnx.split(discriminator)

    def generate(state, g_def=g_def):
      return nnx.merge(g_def, state)(z, noise_mode="const")

    def discriminate(state, images, d_def=d_def):
      return nnx.merge(d_def, state)(images)

    images = jax.jit(generate)(g_state)
    logits = jax.jit(discriminate)(d_state, images)
    assert images.dtype == logits.dtype == jnp.float32
    outputs[compute] = np.asarray(images), np.asarray(logits)
    g_types = convolution_dtypes(generate, g_state)
    assert len(g_types) == 8 and set(g_types) == {(compute,) * 3}, g_types
    # D's blocks in the compute dtype, its 4x4 epilogue's convolution in float32.
    d_types = convolution_dtypes(discriminate, d_state, images)
    assert len(d_types) == 8 and d_types[:-1] == [(compute,) * 3] * 7, d_types
    assert d_types[-1] == ("f32",) * 3
  for want, got in zip(outputs["f32"], outputs["bf16"]):
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 0 < error < 2e-2, error


def test_training_resumes_to_the_same_state_and_samples(tmp_path):
  images = training_images()
  data = inputs_lib.TrainingData([{"image": image} for image in images], images.shape[1:],
                                 images.dtype, "eight images")
  mesh = parallel.data_mesh(1)
  # Two step variants, plain and R1 (path length, the costliest to compile, is tested in
  # test_stylegan2_steps.py).
  config = make_config(num_train_steps=4, **{"loss.r1_interval": 2, "loss.pl_weight": 0.0})
  whole = loop.train(config, tmp_path / "whole", stylegan2.make_trainer(config), data=data,
                     mesh=mesh)
  # Stopped after step 2 (a checkpoint), then the same command with the full step count.
  loop.train(make_config(num_train_steps=2, **{"loss.r1_interval": 2, "loss.pl_weight": 0.0}),
             tmp_path / "split",
             stylegan2.make_trainer(config), data=data, mesh=mesh)
  resumed = loop.train(config, tmp_path / "split", stylegan2.make_trainer(config), data=data,
                       mesh=mesh)
  assert whole.step == resumed.step == 4
  got = jax.tree.leaves(nnx.state(resumed.state))
  want = jax.tree.leaves(nnx.state(whole.state))
  assert len(got) == len(want)
  for a, b in zip(got, want):
    if jnp.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key):
      continue
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  folder = sampling.sample(config, tmp_path / "split", stylegan2.make_trainer(config), mesh=mesh)
  samples = np.concatenate([np.load(path)["images"] for path in sorted(folder.glob("*.npz"))])
  assert samples.shape == (12, SIZE, SIZE, 1) and samples.dtype == np.uint8
  assert samples.std() > 0
  assert list((tmp_path / "split" / "grids").glob("samples_step_*.png"))
