"""The DDPM family on the shared loop: a U-Net trained to predict the noise, sampled with its EMA.

Training follows Ho et al. (2020) as OpenAI's guided-diffusion implements it (the code of Akbar,
Wang & Eklund): images in [-1, 1], a uniformly drawn timestep per image, the mean squared error
of the predicted noise (`memjax.models.diffusion.training_loss`), AdamW, and an EMA of the
weights that sampling uses. Dropout draws its masks from the step's key, so a resumed run draws
the same ones. Ancestral sampling uses the fixed variance of `config.sample.variance`: "large"
(betas, guided-diffusion's FIXED_LARGE, what it samples with when learn_sigma and sigma_small are
off, as in the paper) or "small" (the posterior variance, FIXED_SMALL).

  python launch.py --config=configs/demo_ddpm.py --workdir=runs/demo_ddpm
  python launch.py --config=configs/demo_ddpm.py --workdir=runs/demo_ddpm --config.workflow=sample
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from flax import nnx
import jax
import optax

from memjax.models import diffusion as diffusion_lib
from memjax.models import unet
from memjax.train import state as state_lib

if TYPE_CHECKING:  # Configs are only read: a bare machine may lack ml_collections.
  import ml_collections

NAME = "ddpm"


def make_model(options: ml_collections.ConfigDict, image_shape: tuple[int, ...],
               rngs: nnx.Rngs) -> unet.UNet:
  """The U-Net of `options` (config.model) for images of `image_shape`: (H, W, C), (D, H, W, C).

  An empty `channel_mult` is guided-diffusion's choice for the image size (its default "").
  """
  channels = int(image_shape[-1])
  image_size = int(image_shape[-2])
  channel_mult = tuple(options.channel_mult)
  if not channel_mult:
    try:
      channel_mult = unet.guided_diffusion_channel_mult(image_size)
    except ValueError as e:
      raise ValueError(f"--config.model.channel_mult=(): {e}") from e
  return unet.UNet(
      in_channels=channels, out_channels=channels,
      model_channels=int(options.model_channels), channel_mult=channel_mult,
      num_res_blocks=int(options.num_res_blocks),
      attention_resolutions=tuple(options.attention_resolutions),
      num_heads=int(options.num_heads), num_head_channels=int(options.num_head_channels),
      use_scale_shift_norm=bool(options.use_scale_shift_norm),
      resblock_updown=bool(options.resblock_updown),
      use_new_attention_order=bool(options.use_new_attention_order),
      dropout=float(options.dropout), dims=len(image_shape) - 1, image_size=image_size,
      dtype=state_lib.compute_dtype(options), rngs=rngs)


def make_diffusion(config: ml_collections.ConfigDict) -> diffusion_lib.GaussianDiffusion:
  return diffusion_lib.make_diffusion(schedule=config.diffusion.schedule,
                                  num_steps=int(config.diffusion.num_steps))


def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], key: jax.Array, *,
               diffusion: diffusion_lib.GaussianDiffusion) -> dict[str, jax.Array]:
  """One noise-prediction update: the loss of `diffusion.training_loss`, then Adam and the EMA."""
  noise_key, dropout_key = jax.random.split(key)
  nnx.reseed(state.model, dropout=dropout_key)

  def loss_fn(model):
    return diffusion_lib.training_loss(
        diffusion, lambda x, t: model(x, t, deterministic=False), batch["image"], noise_key)

  loss, grads = nnx.value_and_grad(loss_fn)(state.model)
  state.apply_gradients(grads)
  return {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def generate(state: state_lib.TrainState, key: jax.Array, shape: tuple[int, ...],
             sharding: jax.sharding.Sharding, *, diffusion: diffusion_lib.GaussianDiffusion,
             method: str, num_steps: int, eta: float, variance: str) -> jax.Array:
  """Images of `shape` from the EMA weights: ancestral DDPM with `variance`, or `num_steps` DDIM.

  The sampler keeps the batch split by `sharding` through every denoising step.
  """
  model = state.sampling_model

  def model_fn(x, t):
    return model(x, t, deterministic=True)

  if method == "ddpm":
    return diffusion_lib.ddpm_sample(diffusion, model_fn, shape, key, variance=variance,
                                     sharding=sharding)
  return diffusion_lib.ddim_sample(diffusion, model_fn, shape, key, num_steps, eta=eta,
                                   sharding=sharding)


def make_trainer(config: ml_collections.ConfigDict) -> state_lib.Trainer:
  """The DDPM trainer of `config` (model.*, diffusion.*, optimizer.*, ema_decay, sample.*).

  sample.* as configs/default.py's `ddpm` documents them; sample.variance is "large" when unset
  (guided-diffusion's default).
  """
  method = config.sample.get("method", "ddpm")
  if method not in ("ddpm", "ddim"):
    raise ValueError(f"--config.sample.method must be 'ddpm' or 'ddim', not {method!r}")
  variance = config.sample.get("variance", "large")
  if variance not in diffusion_lib.VARIANCES:
    raise ValueError(f"--config.sample.variance must be one of {diffusion_lib.VARIANCES} "
                     f"(guided-diffusion's FIXED_SMALL and FIXED_LARGE), not {variance!r}")
  diffusion = make_diffusion(config)
  num_steps = int(config.sample.get("num_steps", 0)) or diffusion.num_steps
  if method == "ddim":
    try:
      diffusion_lib.ddim_timesteps(diffusion.num_steps, num_steps)
    except ValueError as e:
      raise ValueError(f"--config.sample.num_steps={num_steps}: {e}") from e
  tx, schedule = state_lib.make_optimizer(config.optimizer, int(config.num_train_steps))

  def init_state(key: jax.Array, image_shape: tuple[int, ...]) -> state_lib.TrainState:
    params_key, dropout_key = jax.random.split(key)
    model = make_model(config.model, image_shape, nnx.Rngs(params=params_key,
                                                           dropout=dropout_key))
    return state_lib.TrainState(model, tx, float(config.ema_decay))

  return state_lib.Trainer(
      name=NAME, init_state=init_state,
      train_step=functools.partial(train_step, diffusion=diffusion),
      generate=functools.partial(generate, diffusion=diffusion, method=method,
                                 num_steps=num_steps, eta=float(config.sample.get("eta", 0.0)),
                                 variance=variance),
      learning_rate=schedule)
