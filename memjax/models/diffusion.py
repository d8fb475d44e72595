"""Gaussian diffusion (Ho et al. 2020) as openai/guided-diffusion computes it, for epsilon models.

The schedule and every quantity derived from it are float64 numpy arrays on a frozen
`GaussianDiffusion`, computed with guided-diffusion's formulas. The functions below are pure JAX:
they gather per-timestep coefficients from float32 copies of those arrays, one per example,
broadcast over the image or volume dimensions, and use no Python control flow on traced values, so
they run under `jax.jit` with sharded inputs. Pass the diffusion by closure or as a static
argument (it hashes by identity).

`model_fn(x_t, t)` takes (N, *spatial, C) float32 and (N,) int32 timesteps and returns the
predicted noise. Randomness, so that a test can reproduce it:
  - `training_loss`: `t_key, noise_key = jax.random.split(key)`; t ~ randint(t_key, (N,), 0, T),
    noise = normal(noise_key, x0.shape).
  - `ddpm_step` / `ddim_step`: noise = `jax.random.normal(key, xt.shape, xt.dtype)`, drawn with
    the key given.
  - `ddpm_sample` / `ddim_sample`: `init_key, steps_key = jax.random.split(key)`;
    x_T = normal(init_key, shape); the step with loop index i (the timestep for DDPM, the index
    into the respaced timesteps for DDIM) uses `jax.random.fold_in(steps_key, i)`.
Draws are the same whether or not the batch is split over devices.

On a mesh with explicit axes (`jax.make_mesh`'s default, `memjax.parallel.data_mesh`), trace under
`jax.set_mesh(mesh)`; the samplers take `sharding=` to keep the batch split through every step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

# The fixed variances of an ancestral step: "small", the posterior variance (guided-diffusion's
# FIXED_SMALL, its sigma_small), and "large", betas (FIXED_LARGE, what guided-diffusion samples
# with by default: learn_sigma and sigma_small off).
VARIANCES = ("small", "large")


def _read_only(array: np.ndarray) -> np.ndarray:
  array.flags.writeable = False
  return array


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """A variance schedule betas (T,) and everything the loss and samplers read from it, in float64.

  Indices are timesteps 0..T-1, where timestep t is the paper's t + 1 (guided-diffusion's
  convention): alphas_cumprod[t] is the signal fraction of x_t after t + 1 noising steps.
  """

  betas: np.ndarray

  def __post_init__(self):
    betas = np.array(self.betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
      raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
      raise ValueError(f"every beta must lie in (0, 1), got values in [{betas.min()}, "
                       f"{betas.max()}]; a linear schedule needs num_steps >= 21")
    object.__setattr__(self, "betas", _read_only(betas))

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])

  @functools.cached_property
  def alphas(self) -> np.ndarray:
    return _read_only(1.0 - self.betas)

  @functools.cached_property
  def alphas_cumprod(self) -> np.ndarray:
    return _read_only(np.cumprod(self.alphas))

  @functools.cached_property
  def alphas_cumprod_prev(self) -> np.ndarray:
    return _read_only(np.append(1.0, self.alphas_cumprod[:-1]))

  @functools.cached_property
  def sqrt_alphas_cumprod(self) -> np.ndarray:
    return _read_only(np.sqrt(self.alphas_cumprod))

  @functools.cached_property
  def sqrt_one_minus_alphas_cumprod(self) -> np.ndarray:
    return _read_only(np.sqrt(1.0 - self.alphas_cumprod))

  @functools.cached_property
  def sqrt_recip_alphas_cumprod(self) -> np.ndarray:
    return _read_only(np.sqrt(1.0 / self.alphas_cumprod))

  @functools.cached_property
  def sqrt_recipm1_alphas_cumprod(self) -> np.ndarray:
    return _read_only(np.sqrt(1.0 / self.alphas_cumprod - 1.0))

  @functools.cached_property
  def posterior_variance(self) -> np.ndarray:
    """Variance of q(x_{t-1} | x_t, x_0); 0 at t = 0."""
    return _read_only(self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod))

  @functools.cached_property
  def posterior_log_variance_clipped(self) -> np.ndarray:
    """log posterior_variance with the 0 at t = 0 replaced by the value at t = 1 (finite)."""
    return _read_only(np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:])))

  @functools.cached_property
  def posterior_mean_coef1(self) -> np.ndarray:
    """Weight of x_0 in the posterior mean."""
    return _read_only(self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod))

  @functools.cached_property
  def posterior_mean_coef2(self) -> np.ndarray:
    """Weight of x_t in the posterior mean."""
    return _read_only((1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas)
                      / (1.0 - self.alphas_cumprod))

  @functools.cached_property
  def large_log_variance(self) -> np.ndarray:
    """log of guided-diffusion's FIXED_LARGE variance: betas, with posterior_variance[1] at t = 0.

    `np.log(np.append(posterior_variance[1], betas[1:]))`, as guided-diffusion's p_mean_variance
    (its choice at t = 0 is for the decoder's likelihood; a sampling step adds no noise there).
    """
    return _read_only(np.log(np.append(self.posterior_variance[1], self.betas[1:])))


def linear_betas(num_steps: int) -> np.ndarray:
  """Ho et al.'s 1e-4..0.02 over 1000 steps, scaled by 1000 / num_steps (guided-diffusion)."""
  scale = 1000.0 / num_steps
  return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal: alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2 for s in [0, 1]."""

  def alpha_bar(s):
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

  return np.array([min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                   for i in range(num_steps)], dtype=np.float64)


def make_diffusion(schedule: str = "linear", num_steps: int = 1000) -> GaussianDiffusion:
  """The named schedule ("linear" or "cosine") over num_steps diffusion steps."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be positive, got {num_steps}")
  if schedule == "linear":
    return GaussianDiffusion(linear_betas(num_steps))
  if schedule == "cosine":
    return GaussianDiffusion(cosine_betas(num_steps))
  raise ValueError(f"unknown noise schedule {schedule!r}; use 'linear' or 'cosine'")


def _extract(values: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
  """values[t] from a float32 copy, shaped (N, 1, ..., 1) to broadcast over an ndim-D batch.

  The gather states that its result is sharded as t is: with a batch split over a mesh's explicit
  axes JAX cannot infer it.
  """
  t = jnp.asarray(t)
  table = jnp.asarray(np.asarray(values, dtype=np.float32))
  gathered = table.at[t].get(out_sharding=jax.typeof(t).sharding)
  return gathered.reshape((-1,) + (1,) * (ndim - 1))


def _normal_like(key: jax.Array, x: jax.Array) -> jax.Array:
  """`jax.random.normal(key, x.shape, x.dtype)`, drawn where x's shards live."""
  return jax.random.normal(key, x.shape, x.dtype, out_sharding=jax.typeof(x).sharding)


def q_sample(diffusion: GaussianDiffusion, x0: jax.Array, t: jax.Array,
             noise: jax.Array) -> jax.Array:
  """x_t ~ q(x_t | x_0): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
  return (_extract(diffusion.sqrt_alphas_cumprod, t, x0.ndim) * x0
          + _extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def training_loss(diffusion: GaussianDiffusion, model_fn: ModelFn, x0: jax.Array,
                  key: jax.Array) -> jax.Array:
  """Mean squared error of the predicted noise over the batch and all pixels (Ho et al.'s L_simple).

  t is uniform over [0, T) per example and the noise standard normal (see the module docstring for
  how both are drawn from `key`).
  """
  t_key, noise_key = jax.random.split(key)
  x0 = jnp.asarray(x0, jnp.float32)
  sharding = jax.typeof(x0).sharding  # t is split over the mesh as the batch is
  batch_sharding = NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))
  t = jax.random.randint(t_key, x0.shape[:1], 0, diffusion.num_steps, dtype=jnp.int32,
                         out_sharding=batch_sharding)
  noise = _normal_like(noise_key, x0)
  predicted = model_fn(q_sample(diffusion, x0, t, noise), t)
  return jnp.mean(jnp.square(predicted.astype(jnp.float32) - noise))


def posterior_mean_variance(diffusion: GaussianDiffusion, x0: jax.Array, xt: jax.Array,
                            t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), each of xt's shape."""
  mean = (_extract(diffusion.posterior_mean_coef1, t, xt.ndim) * x0
          + _extract(diffusion.posterior_mean_coef2, t, xt.ndim) * xt)
  variance = jnp.broadcast_to(_extract(diffusion.posterior_variance, t, xt.ndim), xt.shape)
  log_variance = jnp.broadcast_to(
      _extract(diffusion.posterior_log_variance_clipped, t, xt.ndim), xt.shape)
  return mean, variance, log_variance


def predict_x0_from_noise(diffusion: GaussianDiffusion, xt: jax.Array, t: jax.Array,
                          noise: jax.Array) -> jax.Array:
  """x_0 implied by x_t and its noise: x_t / sqrt(alpha_bar_t) - sqrt(1 / alpha_bar_t - 1) noise."""
  return (_extract(diffusion.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt
          - _extract(diffusion.sqrt_recipm1_alphas_cumprod, t, xt.ndim) * noise)


def _predict_x0(diffusion, model_fn, xt, t, clip_denoised):
  x0 = predict_x0_from_noise(diffusion, xt, t, model_fn(xt, t).astype(xt.dtype))
  return jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0


def ddpm_step(diffusion: GaussianDiffusion, model_fn: ModelFn, xt: jax.Array, t: jax.Array,
              key: jax.Array, clip_denoised: bool = True, *, variance: str = "large") -> jax.Array:
  """One ancestral step x_t -> x_{t-1} (guided-diffusion's `p_sample`); no noise where t == 0.

  The mean is the posterior mean at the predicted x_0 (clipped to [-1, 1] with `clip_denoised`);
  the standard deviation is exp(log_variance / 2) times `jax.random.normal(key, xt.shape,
  xt.dtype)`, with variance "large" (betas, FIXED_LARGE, what guided-diffusion uses when
  learn_sigma and sigma_small are off, its default) or "small" (the posterior variance,
  FIXED_SMALL).
  """
  if variance not in VARIANCES:
    raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
  x0 = _predict_x0(diffusion, model_fn, xt, t, clip_denoised)
  mean = (_extract(diffusion.posterior_mean_coef1, t, xt.ndim) * x0
          + _extract(diffusion.posterior_mean_coef2, t, xt.ndim) * xt)
  log_variance = _extract(diffusion.posterior_log_variance_clipped if variance == "small"
                          else diffusion.large_log_variance, t, xt.ndim)
  noise = _normal_like(key, xt)
  nonzero = (t != 0).astype(xt.dtype).reshape((-1,) + (1,) * (xt.ndim - 1))
  return mean + nonzero * jnp.exp(0.5 * log_variance) * noise


def _laid_out(x: jax.Array, sharding: jax.sharding.Sharding | None) -> jax.Array:
  """x laid out as `sharding`: resharded on a mesh with explicit axes, constrained otherwise."""
  if sharding is None:
    return x
  axis_types = getattr(getattr(sharding, "mesh", None), "axis_types", ())
  if jax.sharding.AxisType.Explicit in axis_types:
    return jax.sharding.reshard(x, sharding)
  return jax.lax.with_sharding_constraint(x, sharding)


def ddpm_sample(diffusion: GaussianDiffusion, model_fn: ModelFn, shape: tuple[int, ...],
                key: jax.Array, clip_denoised: bool = True, *, variance: str = "large",
                sharding: jax.sharding.Sharding | None = None) -> jax.Array:
  """Samples of `shape` after all T ancestral steps from x_T ~ N(0, I), in one `lax.fori_loop`.

  Every step is `ddpm_step` with `variance` ("large": guided-diffusion's default, "small").

  `sharding`, when given, is kept on the image batch through every step (e.g. the batch split over
  a data mesh); otherwise the compiler chooses.
  """
  init_key, steps_key = jax.random.split(key)
  num_steps = diffusion.num_steps

  def step(i, x):
    timestep = num_steps - 1 - i
    t = jnp.full((shape[0],), timestep, jnp.int32)
    x = ddpm_step(diffusion, model_fn, x, t, jax.random.fold_in(steps_key, timestep),
                  clip_denoised, variance=variance)
    return _laid_out(x, sharding)

  x_T = _laid_out(jax.random.normal(init_key, shape, jnp.float32), sharding)
  return jax.lax.fori_loop(0, num_steps, step, x_T)


def ddim_timesteps(total_steps: int, num_steps: int) -> np.ndarray:
  """range(0, total_steps, stride) with exactly num_steps entries: guided-diffusion's "ddimN"."""
  for stride in range(1, total_steps + 1):
    if len(range(0, total_steps, stride)) == num_steps:
      return np.arange(0, total_steps, stride)
  raise ValueError(f"{num_steps} DDIM steps cannot be taken from {total_steps} diffusion steps "
                   f"with an integer stride; choose a count that some stride gives (e.g. a divisor "
                   f"of {total_steps})")


def ddim_step(diffusion: GaussianDiffusion, model_fn: ModelFn, xt: jax.Array, t: jax.Array,
              t_prev: jax.Array, key: jax.Array, eta: float = 0.0,
              clip_denoised: bool = True) -> jax.Array:
  """One DDIM step from timestep t to t_prev < t (t_prev = -1: to the clean image), eq. 12.

  guided-diffusion's `ddim_sample`: x_0 predicted (and clipped), the noise re-derived from it,
  x_prev = sqrt(ab_prev) x_0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z with
  sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev) and
  z = `jax.random.normal(key, xt.shape, xt.dtype)`; eta = 0 is deterministic.
  """
  x0 = _predict_x0(diffusion, model_fn, xt, t, clip_denoised)
  eps = ((_extract(diffusion.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt - x0)
         / _extract(diffusion.sqrt_recipm1_alphas_cumprod, t, xt.ndim))
  alpha_bar = _extract(diffusion.alphas_cumprod, t, xt.ndim)
  t_prev = jnp.asarray(t_prev)
  has_prev = (t_prev >= 0).reshape((-1,) + (1,) * (xt.ndim - 1))
  alpha_bar_prev = jnp.where(
      has_prev, _extract(diffusion.alphas_cumprod, jnp.maximum(t_prev, 0), xt.ndim), 1.0)
  sigma = (eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
           * jnp.sqrt(1.0 - alpha_bar / alpha_bar_prev))
  mean = (jnp.sqrt(alpha_bar_prev) * x0
          + jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps)
  noise = _normal_like(key, xt)
  return mean + jnp.where(has_prev, sigma, 0.0) * noise


def ddim_sample(diffusion: GaussianDiffusion, model_fn: ModelFn, shape: tuple[int, ...],
                key: jax.Array, num_steps: int, eta: float = 0.0, clip_denoised: bool = True, *,
                sharding: jax.sharding.Sharding | None = None) -> jax.Array:
  """Samples of `shape` after num_steps DDIM steps over evenly spaced timesteps ("ddimN").

  The model sees the original timesteps (0, stride, 2 stride, ...), as guided-diffusion's respaced
  diffusion passes them with rescale_timesteps off. `sharding` as in `ddpm_sample`.
  """
  timesteps = jnp.asarray(ddim_timesteps(diffusion.num_steps, num_steps), jnp.int32)
  init_key, steps_key = jax.random.split(key)

  def step(j, x):
    i = num_steps - 1 - j
    t = jnp.full((shape[0],), timesteps[i], jnp.int32)
    t_prev = jnp.full((shape[0],), jnp.where(i > 0, timesteps[jnp.maximum(i - 1, 0)], -1),
                      jnp.int32)
    x = ddim_step(diffusion, model_fn, x, t, t_prev, jax.random.fold_in(steps_key, i), eta,
                  clip_denoised)
    return _laid_out(x, sharding)

  x_T = _laid_out(jax.random.normal(init_key, shape, jnp.float32), sharding)
  return jax.lax.fori_loop(0, num_steps, step, x_T)
