"""The StyleGAN2 family on the shared loop: stylegan2-ada-pytorch's training, phase for phase.

Every batch runs the reference's phases in its order, each with its own Adam update:
  Gmain  non-saturating logistic loss, softplus(-D(G(z))), with style mixing (probability 0.9);
  Greg   every `pl_interval` (4) steps: path-length regularization on half the batch,
         (|J_w^T y| - a)^2 with a the running mean of the lengths, weighted `pl_weight` x interval;
  Dmain  softplus(D(G(z))) + softplus(-D(x));
  Dreg   every `r1_interval` (16) steps: R1 on reals, gamma/2 |grad_x D(x)|^2 x interval.
Lazy regularization scales Adam's learning rate and betas by interval/(interval + 1). D sees every
image (real or fake) through the adaptive augmentation (`memjax.train.augment`), whose
probability p moves every `ada.interval` steps by sign(E[sign(D(x_real))] - target) x
batch x interval / (ada.kimg x 1000), toward D's outputs on reals being positive 60% of the time.
The generator's EMA has a half-life of `ema_kimg` thousand images (ramped up over the first
images by `ema_rampup`), and the tracked w average is copied to it as the reference copies
buffers. Gradients are sanitised (NaN -> 0, +-inf -> +-1e5) as the reference does.

The phases that run only every few steps make three variants of the step (neither regularizer,
path length, both), each compiled once (`state.Trainer.variant`), and the step's key alone decides
its noise: a resumed run redraws the same. Each phase is a function of its own (`g_main`, `g_reg`,
`d_main`, `d_reg`) that draws only from its own named keys (`phase_keys`), so whether a
regularizer runs in a step, or where a phase sits in the code, changes no other phase's draws.

  python launch.py --config=configs/demo_stylegan2.py --workdir=runs/demo_stylegan2
  python launch.py --config=configs/demo_stylegan2.py --workdir=runs/demo_stylegan2 \
      --config.workflow=sample
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from memjax.models import stylegan2 as stylegan2_lib
from memjax.train import augment as augment_lib
from memjax.train import state as state_lib

if TYPE_CHECKING:  # Configs are only read: a bare machine may lack ml_collections.
  import ml_collections

NAME = "stylegan2"


class StyleGAN2State(nnx.Module):
  """G, its EMA copy, D, their Adam states, the path-length mean, ADA's p and the step."""

  def __init__(self, generator: stylegan2_lib.Generator,
               discriminator: stylegan2_lib.Discriminator, g_tx: optax.GradientTransformation,
               d_tx: optax.GradientTransformation, augment_p: float):
    self.generator = generator
    self.generator_ema = nnx.clone(generator)
    self.discriminator = discriminator
    self.g_optimizer = nnx.Optimizer(generator, g_tx, wrt=nnx.Param)
    self.d_optimizer = nnx.Optimizer(discriminator, d_tx, wrt=nnx.Param)
    self.pl_mean = stylegan2_lib.Buffer(jnp.zeros((), jnp.float32))
    self.augment_p = stylegan2_lib.Buffer(jnp.asarray(augment_p, jnp.float32))
    # Sum and count of sign(D(real)) since ADA last adjusted p.
    self.ada_signs = stylegan2_lib.Buffer(jnp.zeros((2,), jnp.float32))
    self.step = nnx.Variable(jnp.zeros((), jnp.int32))


def make_models(config: ml_collections.ConfigDict, image_shape: tuple[int, ...], key: jax.Array
                ) -> tuple[stylegan2_lib.Generator, stylegan2_lib.Discriminator]:
  """G and D of `config.model` for images of `image_shape` (H, W, C)."""
  if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
    raise ValueError(f"StyleGAN2 trains on square 2D images (H, W, C), not {tuple(image_shape)}; "
                     "for 3D data use a DDPM config")
  options = config.model
  g_key, d_key = jax.random.split(key)
  common = dict(img_resolution=int(image_shape[0]), img_channels=int(image_shape[-1]),
                channel_base=int(options.channel_base), channel_max=int(options.channel_max),
                conv_clamp=options.get("conv_clamp"), dtype=state_lib.compute_dtype(options))
  generator = stylegan2_lib.Generator(
      z_dim=int(options.z_dim), w_dim=int(options.w_dim), mapping_layers=int(options.map_layers),
      mapping_lr_multiplier=float(options.mapping_lr_multiplier), rngs=nnx.Rngs(params=g_key),
      **common)
  discriminator = stylegan2_lib.Discriminator(
      mbstd_group_size=int(options.mbstd_group_size), rngs=nnx.Rngs(params=d_key), **common)
  return generator, discriminator


def lazy_adam(options: ml_collections.ConfigDict, learning_rate: float, interval: int
              ) -> optax.GradientTransformation:
  """Adam with the reference's lazy-regularization correction for a regularizer every `interval`."""
  ratio = interval / (interval + 1) if interval > 0 else 1.0
  return optax.adam(float(learning_rate) * ratio, b1=float(options.b1) ** ratio,
                    b2=float(options.b2) ** ratio, eps=float(options.eps))


def _sanitize(grads):
  return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), grads)


def _mapped(generator: stylegan2_lib.Generator, z: jax.Array, key: jax.Array,
            mixing_prob: float) -> tuple[jax.Array, jax.Array]:
  """(ws with style mixing, w of z): with probability `mixing_prob` the ws from a random cutoff in
  [1, num_ws) on come from a second z, one cutoff for the whole batch (the reference's run_G)."""
  mapping = generator.mapping
  w = mapping.transform(z)
  ws = mapping.broadcast(w)
  if mixing_prob > 0:
    cutoff_key, draw_key, z_key = jax.random.split(key, 3)
    cutoff = jax.random.randint(cutoff_key, (), 1, mapping.num_ws)
    cutoff = jnp.where(jax.random.uniform(draw_key) < mixing_prob, cutoff, mapping.num_ws)
    other = mapping.broadcast(mapping.transform(jax.random.normal(z_key, z.shape, z.dtype)))
    layer = jnp.arange(mapping.num_ws)[None, :, None]
    ws = jnp.where(layer >= cutoff, other, ws)
  return ws, w


class _Settings:
  """The training constants of a config, read once."""

  def __init__(self, config: ml_collections.ConfigDict):
    loss = config.loss
    self.r1_gamma = float(loss.r1_gamma)
    self.r1_interval = int(loss.r1_interval)
    self.pl_weight = float(loss.pl_weight)
    self.pl_interval = int(loss.pl_interval)
    self.pl_batch_shrink = int(loss.pl_batch_shrink)
    self.pl_decay = float(loss.pl_decay)
    self.style_mixing_prob = float(loss.style_mixing_prob)
    self.mirror = bool(config.data.get("mirror", False))
    self.ema_kimg = float(config.ema_kimg)
    self.ema_rampup = config.get("ema_rampup")
    ada = config.ada
    self.augment = ada.augment  # "ada", "fixed" (p stays at ada.initial_p) or "none"
    if self.augment not in ("ada", "fixed", "none"):
      raise ValueError(f"--config.ada.augment must be 'ada', 'fixed' or 'none', not "
                       f"{self.augment!r}")
    self.ada_target = float(ada.target)
    self.ada_interval = int(ada.interval)
    self.ada_kimg = float(ada.kimg)
    self.augment_options = augment_lib.AugmentOptions(**dict(ada.get("strengths", {})))
    self.z_dim = int(config.model.z_dim)


def regularizers_due(step: int, settings: _Settings) -> tuple[bool, bool]:
  """(path length, R1): whether step `step` runs each lazy regularizer (the step's variant)."""
  return (settings.pl_weight > 0 and step % settings.pl_interval == 0,
          settings.r1_gamma > 0 and step % settings.r1_interval == 0)


# Every random draw of a step has a name and its own slot among the step key's splits, so that
# no phase's draws depend on which other phases run in that step or on the order the code calls
# them (NVlabs' `accumulate_gradients(phase)` runs each phase on its own).
_DRAWS = {
    "mirror": {"flip": 0},
    "Gmain": {"z": 1, "mixing": 2, "noise": 3, "augment": 4},
    "Greg": {"z": 5, "mixing": 6, "noise": 7, "pl_noise": 8},
    "Dmain": {"z": 9, "mixing": 10, "noise": 11, "augment_fake": 12, "augment_real": 13},
    "Dreg": {"augment": 14},
}
_SLOTS = 16


def phase_keys(key: jax.Array, phase: str) -> dict[str, jax.Array]:
  """The named keys of one phase ("mirror", "Gmain", "Greg", "Dmain", "Dreg") of the step `key`."""
  slots = jax.random.split(key, _SLOTS)
  return {name: slots[slot] for name, slot in _DRAWS[phase].items()}


def _discriminate(discriminator: stylegan2_lib.Discriminator, images: jax.Array,
                  key: jax.Array, p: jax.Array | None, s: _Settings) -> jax.Array:
  """D's logits for `images`, through the augmentation at probability p (none when p is None)."""
  if p is not None:
    images = augment_lib.augment(images, key, p, s.augment_options)
  return discriminator(images)


def _fakes(generator: stylegan2_lib.Generator, count: int, keys: dict[str, jax.Array],
           s: _Settings) -> tuple[jax.Array, jax.Array]:
  """(images, w) of `count` fresh z, style-mixed and with random noise, from a phase's keys."""
  z = jax.random.normal(keys["z"], (count, s.z_dim))
  ws, w = _mapped(generator, z, keys["mixing"], s.style_mixing_prob)
  return generator.synthesis(ws, "random", keys["noise"]), w


def mirror(reals: jax.Array, keys: dict[str, jax.Array]) -> jax.Array:
  """Each real image flipped left-right with probability 1/2 (the reference's --mirror=1)."""
  flip = jax.random.bernoulli(keys["flip"], 0.5, (reals.shape[0], 1, 1, 1))
  return jnp.where(flip, reals[:, :, ::-1], reals)


def g_main(state: StyleGAN2State, count: int, keys: dict[str, jax.Array], p: jax.Array | None,
           s: _Settings) -> jax.Array:
  """Gmain: G's Adam step on softplus(-D(G(z))) for `count` fakes; the tracked w average moves."""

  def loss(generator, discriminator):
    fakes, w = _fakes(generator, count, keys, s)
    logits = _discriminate(discriminator, fakes, keys["augment"], p, s)
    return jnp.mean(jax.nn.softplus(-logits)), w

  (g_loss, w), grads = nnx.value_and_grad(loss, has_aux=True)(state.generator,
                                                               state.discriminator)
  state.g_optimizer.update(state.generator, _sanitize(grads))
  state.generator.mapping.update_w_avg(w)
  return g_loss


def g_reg(state: StyleGAN2State, count: int, keys: dict[str, jax.Array],
          s: _Settings) -> jax.Array:
  """Greg: path-length regularization on count / pl_batch_shrink fakes; the mean penalty."""
  count = max(count // s.pl_batch_shrink, 1)

  def loss(generator):
    z = jax.random.normal(keys["z"], (count, s.z_dim))
    ws, w = _mapped(generator, z, keys["mixing"], s.style_mixing_prob)
    images, pullback = jax.vjp(lambda ws: generator.synthesis(ws, "random", keys["noise"]), ws)
    pl_noise = jax.random.normal(keys["pl_noise"], images.shape) / math.sqrt(
        images.shape[1] * images.shape[2])
    (gradients,) = pullback(pl_noise)
    lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(gradients), axis=2), axis=1))
    pl_mean = state.pl_mean[...]
    pl_mean = pl_mean + s.pl_decay * (jnp.mean(lengths) - pl_mean)
    penalty = jnp.square(lengths - jax.lax.stop_gradient(pl_mean))
    return jnp.mean(penalty) * s.pl_weight * s.pl_interval, (jnp.mean(penalty), pl_mean, w)

  (_, (penalty, pl_mean, w)), grads = nnx.value_and_grad(loss, has_aux=True)(state.generator)
  state.g_optimizer.update(state.generator, _sanitize(grads))
  state.generator.mapping.update_w_avg(w)
  state.pl_mean[...] = jax.lax.stop_gradient(pl_mean)
  return penalty


def d_main(state: StyleGAN2State, reals: jax.Array, keys: dict[str, jax.Array],
           p: jax.Array | None, s: _Settings) -> tuple[jax.Array, jax.Array]:
  """Dmain: D's Adam step on softplus(D(G(z))) + softplus(-D(x)); (loss, [sum of signs of
  D(real), count]) for ADA."""
  fakes, w = _fakes(state.generator, reals.shape[0], keys, s)
  fakes = jax.lax.stop_gradient(fakes)
  state.generator.mapping.update_w_avg(w)

  def loss(discriminator):
    fake_logits = _discriminate(discriminator, fakes, keys["augment_fake"], p, s)
    real_logits = _discriminate(discriminator, reals, keys["augment_real"], p, s)
    total = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
    return total, real_logits

  (d_loss, real_logits), grads = nnx.value_and_grad(loss, has_aux=True)(state.discriminator)
  state.d_optimizer.update(state.discriminator, _sanitize(grads))
  return d_loss, jnp.stack([jnp.sum(jnp.sign(real_logits)), jnp.float32(reals.shape[0])])


def d_reg(state: StyleGAN2State, reals: jax.Array, keys: dict[str, jax.Array],
          p: jax.Array | None, s: _Settings) -> tuple[jax.Array, jax.Array]:
  """Dreg: R1 on reals, gamma/2 |grad_x D(aug(x))|^2 (the reference differentiates through the
  augmentation); (the mean penalty, [sum of signs of D(real), count])."""

  def loss(discriminator):
    logits, pullback = jax.vjp(
        lambda x: _discriminate(discriminator, x, keys["augment"], p, s), reals)
    (gradients,) = pullback(jnp.ones_like(logits))
    penalty = jnp.sum(jnp.square(gradients), axis=(1, 2, 3))
    return (jnp.mean(penalty) * (s.r1_gamma / 2) * s.r1_interval,
            (jnp.mean(penalty), jax.lax.stop_gradient(logits)))

  (_, (penalty, logits)), grads = nnx.value_and_grad(loss, has_aux=True)(state.discriminator)
  state.d_optimizer.update(state.discriminator, _sanitize(grads))
  return penalty, jnp.stack([jnp.sum(jnp.sign(logits)), jnp.float32(reals.shape[0])])


def update_ema(state: StyleGAN2State, count: int, s: _Settings) -> None:
  """The generator's EMA: half-life ema_kimg thousand images, ramped up by ema_rampup; the
  buffers (w average, constant noise) are copied."""
  ema_nimg = jnp.float32(s.ema_kimg * 1000)
  if s.ema_rampup is not None:
    images_seen = (state.step[...] * count).astype(jnp.float32)
    ema_nimg = jnp.minimum(ema_nimg, images_seen * float(s.ema_rampup))
  beta = jnp.power(0.5, count / jnp.maximum(ema_nimg, 1e-8))
  averaged = jax.tree.map(lambda e, w: w + beta * (e - w),
                          nnx.state(state.generator_ema, nnx.Param),
                          nnx.state(state.generator, nnx.Param))
  nnx.update(state.generator_ema, averaged)
  nnx.update(state.generator_ema, nnx.state(state.generator, stylegan2_lib.Buffer))


def adjust_ada(state: StyleGAN2State, signs: jax.Array, count: int, s: _Settings) -> None:
  """ADA: every ada_interval steps, p moves toward E[sign(D(real))] = target."""
  total = state.ada_signs[...] + signs
  adjust = (jnp.sign(total[0] / total[1] - s.ada_target) * (count * s.ada_interval)
            / (s.ada_kimg * 1000))
  due = state.step[...] % s.ada_interval == 0
  state.augment_p[...] = jnp.where(
      due, jnp.clip(state.augment_p[...] + adjust, 0.0, 1.0), state.augment_p[...])
  state.ada_signs[...] = jnp.where(due, jnp.zeros_like(total), total)


def train_step(state: StyleGAN2State, batch: dict[str, jax.Array], key: jax.Array, *,
               settings: _Settings, variant: tuple[bool, bool]) -> dict[str, jax.Array]:
  """One batch of the phases due (`variant`: `regularizers_due`), the EMA and ADA's adjustment.

  The phases run in the reference's order, Gmain, Greg, Dmain, Dreg, each on its own named keys
  (`phase_keys`).
  """
  do_pl, do_r1 = variant
  s = settings
  reals = batch["image"]
  n = reals.shape[0]
  if s.mirror:
    reals = mirror(reals, phase_keys(key, "mirror"))
  p = state.augment_p[...] if s.augment != "none" else None
  nan = jnp.float32(jnp.nan)
  g_loss = g_main(state, n, phase_keys(key, "Gmain"), p, s)
  pl_penalty = g_reg(state, n, phase_keys(key, "Greg"), s) if do_pl else nan
  d_loss, signs = d_main(state, reals, phase_keys(key, "Dmain"), p, s)
  r1_penalty = nan
  if do_r1:
    r1_penalty, r1_signs = d_reg(state, reals, phase_keys(key, "Dreg"), p, s)
    signs = signs + r1_signs
  update_ema(state, n, s)
  if s.augment == "ada":
    adjust_ada(state, signs, n, s)
  return {"loss_G": g_loss, "loss_D": d_loss, "pl_penalty": pl_penalty, "r1_penalty": r1_penalty,
          "augment_p": state.augment_p[...], "real_sign": signs[0] / signs[1],
          "pl_mean": state.pl_mean[...]}


def generate(state: StyleGAN2State, key: jax.Array, shape: tuple[int, ...],
             sharding: jax.sharding.Sharding, *, truncation_psi: float,
             noise_mode: str) -> jax.Array:
  """Images of `shape` from the EMA generator, z ~ N(0, I), truncated toward w_avg by psi."""
  z_key, noise_key = jax.random.split(key)
  generator = state.generator_ema
  z = jax.lax.with_sharding_constraint(jax.random.normal(z_key, (shape[0], generator.z_dim)),
                                       sharding)
  images = generator(z, noise_key, truncation_psi=truncation_psi, noise_mode=noise_mode)
  return jnp.clip(images, -1.0, 1.0)


def make_trainer(config: ml_collections.ConfigDict) -> state_lib.Trainer:
  """The StyleGAN2 trainer of `config` (model.*, loss.*, ada.*, optimizer.*, ema_*, sample.*)."""
  settings = _Settings(config)
  learning_rate = float(config.optimizer.learning_rate)
  d_learning_rate = config.optimizer.get("d_learning_rate")
  d_learning_rate = learning_rate if d_learning_rate is None else float(d_learning_rate)
  g_tx = lazy_adam(config.optimizer, learning_rate,
                   settings.pl_interval if settings.pl_weight > 0 else 0)
  d_tx = lazy_adam(config.optimizer, d_learning_rate,
                   settings.r1_interval if settings.r1_gamma > 0 else 0)
  noise_mode = config.sample.get("noise_mode", "const")
  if noise_mode not in ("random", "const", "none"):
    raise ValueError(f"--config.sample.noise_mode must be 'random', 'const' or 'none', not "
                     f"{noise_mode!r}")
  initial_p = float(config.ada.get("initial_p", 0.0)) if settings.augment != "none" else 0.0

  def init_state(key: jax.Array, image_shape: tuple[int, ...]) -> StyleGAN2State:
    generator, discriminator = make_models(config, image_shape, key)
    return StyleGAN2State(generator, discriminator, g_tx, d_tx, initial_p)

  return state_lib.Trainer(
      name=NAME, init_state=init_state,
      train_step=functools.partial(train_step, settings=settings),
      variant=functools.partial(regularizers_due, settings=settings),
      generate=functools.partial(generate,
                                 truncation_psi=float(config.sample.get("truncation_psi", 1.0)),
                                 noise_mode=noise_mode),
      learning_rate=lambda step: learning_rate)
