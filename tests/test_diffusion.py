"""Gaussian diffusion against independent float64 closed forms: schedules, q_sample, the posterior,
one DDPM and one DDIM step, the loss, oracle sampling, and sharded, jitted use."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import parallel
from memjax.models import diffusion
from memjax.models.diffusion import make_diffusion

SCHEDULES = [("linear", 1000), ("linear", 37), ("cosine", 1000), ("cosine", 37)]


def cosine_alpha_bar(s):
  return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def reference_betas(schedule, num_steps):
  """Betas from the papers' formulas, one Python float at a time."""
  if schedule == "linear":
    start, end = 1e-4 * 1000 / num_steps, 0.02 * 1000 / num_steps
    return np.array([start + (end - start) * i / (num_steps - 1) for i in range(num_steps)])
  return np.array([min(1 - cosine_alpha_bar((i + 1) / num_steps) / cosine_alpha_bar(i / num_steps),
                       0.999) for i in range(num_steps)])


def reference_quantities(betas):
  """Every derived quantity by its definition, in a Python loop over timesteps (float64)."""
  q = {name: [] for name in ("alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                             "sqrt_one_minus_alphas_cumprod", "posterior_variance",
                             "posterior_mean_coef1", "posterior_mean_coef2")}
  alpha_bar = 1.0
  for beta in betas:
    alpha_bar_prev, alpha_bar = alpha_bar, alpha_bar * (1 - beta)
    q["alphas_cumprod"].append(alpha_bar)
    q["alphas_cumprod_prev"].append(alpha_bar_prev)
    q["sqrt_alphas_cumprod"].append(math.sqrt(alpha_bar))
    q["sqrt_one_minus_alphas_cumprod"].append(math.sqrt(1 - alpha_bar))
    # Ho et al. eq. 7: beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t, and the mean's weights.
    q["posterior_variance"].append((1 - alpha_bar_prev) / (1 - alpha_bar) * beta)
    q["posterior_mean_coef1"].append(math.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar))
    q["posterior_mean_coef2"].append(math.sqrt(1 - beta) * (1 - alpha_bar_prev) / (1 - alpha_bar))
  q = {name: np.array(values) for name, values in q.items()}
  variance = q["posterior_variance"]
  q["posterior_log_variance_clipped"] = np.log(np.concatenate([variance[1:2], variance[1:]]))
  # guided-diffusion's FIXED_LARGE: betas, but the posterior variance at t = 1 for t = 0.
  q["large_log_variance"] = np.log(np.concatenate([variance[1:2], np.asarray(betas)[1:]]))
  return q


@pytest.mark.parametrize("schedule, num_steps", SCHEDULES)
def test_schedule_quantities_match_closed_forms(schedule, num_steps):
  d = make_diffusion(schedule, num_steps)
  assert d.num_steps == num_steps
  assert d.betas.dtype == np.float64 and d.betas.shape == (num_steps,)
  np.testing.assert_allclose(d.betas, reference_betas(schedule, num_steps), rtol=1e-12, atol=0)
  for name, expected in reference_quantities(reference_betas(schedule, num_steps)).items():
    got = getattr(d, name)
    assert got.dtype == np.float64 and got.shape == (num_steps,), name
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=0, err_msg=name)


def test_linear_schedule_of_the_paper():
  d = make_diffusion("linear", 4000)  # Akbar et al.: 4000 linear steps
  assert d.betas[0] == pytest.approx(2.5e-5, rel=1e-12)
  assert d.betas[-1] == pytest.approx(0.005, rel=1e-12)
  assert 0 < d.alphas_cumprod[-1] < 1e-4  # x_T is nearly pure noise


@pytest.mark.parametrize("num_steps", [1000, 37])
def test_cosine_alphas_cumprod_follow_the_cosine(num_steps):
  d = make_diffusion("cosine", num_steps)
  unclipped = d.betas < 0.999
  assert unclipped[:-1].all()  # only the last beta can hit the 0.999 cap
  s = (np.arange(num_steps) + 1) / num_steps
  expected = (np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
              / math.cos(0.008 / 1.008 * math.pi / 2) ** 2)
  np.testing.assert_allclose(d.alphas_cumprod[unclipped], expected[unclipped], rtol=1e-9)


def test_schedule_errors():
  with pytest.raises(ValueError, match="unknown noise schedule"):
    make_diffusion("quadratic", 10)
  with pytest.raises(ValueError, match="num_steps >= 21"):
    make_diffusion("linear", 20)  # the last beta would be 1
  with pytest.raises(ValueError, match="1-D"):
    diffusion.GaussianDiffusion(np.zeros((2, 2)) + 0.1)


def test_schedule_is_immutable():
  d = make_diffusion("linear", 37)
  with pytest.raises(ValueError):
    d.alphas_cumprod[0] = 0.5
  with pytest.raises(AttributeError):
    d.betas = np.ones(3)


def draw(rng, shape):
  return rng.uniform(-1, 1, shape).astype(np.float32)


def test_q_sample_matches_numpy(rng):
  d = make_diffusion("linear", 1000)
  x0, noise = draw(rng, (4, 6, 5, 2)), rng.standard_normal((4, 6, 5, 2)).astype(np.float32)
  t = np.array([0, 1, 500, 999])
  got = jax.jit(lambda *a: diffusion.q_sample(d, *a))(x0, jnp.asarray(t, jnp.int32), noise)
  abar = np.cumprod(1 - d.betas)[t][:, None, None, None]
  np.testing.assert_allclose(got, np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise, atol=1e-6)


def test_posterior_is_the_gaussian_closed_form(rng):
  d = make_diffusion("cosine", 37)
  x0, xt = draw(rng, (5, 4, 4, 4, 1)), draw(rng, (5, 4, 4, 4, 1))  # 3D volumes
  t = np.array([1, 2, 17, 35, 36])
  mean, variance, log_variance = diffusion.posterior_mean_variance(
      d, x0, xt, jnp.asarray(t, jnp.int32))
  # q(x_{t-1} | x_0) = N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}) and q(x_t | x_{t-1}) =
  # N(sqrt(alpha_t) x_{t-1}, beta_t): multiply the two Gaussians in x_{t-1}.
  beta = d.betas[t][:, None, None, None, None]
  abar_prev = np.cumprod(1 - d.betas)[t - 1][:, None, None, None, None]
  precision = 1 / (1 - abar_prev) + (1 - beta) / beta
  expected_mean = (np.sqrt(abar_prev) * x0 / (1 - abar_prev)
                   + np.sqrt(1 - beta) * xt / beta) / precision
  assert mean.shape == variance.shape == log_variance.shape == x0.shape
  np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(variance, np.broadcast_to(1 / precision, x0.shape), rtol=1e-5)
  np.testing.assert_allclose(log_variance, np.broadcast_to(-np.log(precision), x0.shape),
                             rtol=1e-5)
  # At t = 0 the posterior is x_0 itself; the log-variance takes the value at t = 1.
  mean, variance, log_variance = diffusion.posterior_mean_variance(
      d, x0, xt, jnp.zeros(5, jnp.int32))
  np.testing.assert_allclose(mean, x0, atol=1e-6)
  assert np.all(np.asarray(variance) == 0)
  np.testing.assert_allclose(log_variance, np.log(d.posterior_variance[1]), rtol=1e-6)


def test_predict_x0_inverts_q_sample(rng):
  d = make_diffusion("linear", 1000)
  x0, noise = draw(rng, (3, 8, 8, 1)), rng.standard_normal((3, 8, 8, 1)).astype(np.float32)
  t = jnp.array([0, 300, 999], jnp.int32)
  xt = diffusion.q_sample(d, x0, t, noise)
  np.testing.assert_allclose(diffusion.predict_x0_from_noise(d, xt, t, noise), x0, atol=2e-4)


def fake_model(x, t):
  del t
  return 0.1 * x


def numpy_ddpm_step(d, xt, t, noise, clip, variance="small"):
  """guided-diffusion's p_sample for eps = 0.1 x, written from the definitions in float64."""
  xt = xt.astype(np.float64)
  shape = (-1,) + (1,) * (xt.ndim - 1)
  abar = np.cumprod(1 - d.betas)
  abar_prev = np.append(1.0, abar[:-1])
  a, ap, beta = abar[t].reshape(shape), abar_prev[t].reshape(shape), d.betas[t].reshape(shape)
  x0 = (xt - np.sqrt(1 - a) * 0.1 * xt) / np.sqrt(a)
  if clip:
    x0 = np.clip(x0, -1, 1)
  mean = (np.sqrt(ap) * beta * x0 + np.sqrt(1 - beta) * (1 - ap) * xt) / (1 - a)
  posterior = (1 - abar_prev) / (1 - abar) * d.betas
  if variance == "small":
    var = np.append(posterior[1], posterior[1:])[t].reshape(shape)
  else:
    var = np.append(posterior[1], d.betas[1:])[t].reshape(shape)
  return mean + (t != 0).reshape(shape) * np.sqrt(var) * noise


@pytest.mark.parametrize("clip, variance", [(True, "small"), (False, "small"), (True, "large"),
                                           (False, "large")])
def test_one_ddpm_step_matches_numpy(rng, clip, variance):
  d = make_diffusion("linear", 1000)
  xt = 2.5 * draw(rng, (4, 6, 6, 2))  # outside [-1, 1]: the clip acts at large t
  t = np.array([0, 1, 400, 999])
  key = jax.random.key(7)
  step = jax.jit(lambda xt, t, key: diffusion.ddpm_step(d, fake_model, xt, t, key, clip,
                                                        variance=variance))
  got = step(xt, jnp.asarray(t, jnp.int32), key)
  noise = np.asarray(jax.random.normal(key, xt.shape), np.float64)  # as the docstring says
  np.testing.assert_allclose(got, numpy_ddpm_step(d, xt, t, noise, clip, variance),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[0], numpy_ddpm_step(d, xt, t, 0 * noise, clip, variance)[0],
                             atol=1e-6)  # no noise at t == 0


@pytest.mark.parametrize("variance", ["large", "small"])
def test_one_ddpm_steps_noise_has_the_fixed_variance_at_every_timestep(variance):
  # With x_t = 0 and eps = 0.1 x_t the mean is 0, so a step returns sigma_t times its noise.
  d = make_diffusion("linear", 1000)
  t = np.arange(1000)
  key = jax.random.key(9)
  shape = (1000, 2, 2, 1)
  got = jax.jit(lambda t, key: diffusion.ddpm_step(d, fake_model, jnp.zeros(shape), t, key,
                                                   variance=variance))(
      jnp.asarray(t, jnp.int32), key)
  noise = np.asarray(jax.random.normal(key, shape), np.float64)
  sigma = (np.asarray(got, np.float64) / noise).reshape(1000, -1)
  q = reference_quantities(reference_betas("linear", 1000))
  expected = np.sqrt(np.asarray(reference_betas("linear", 1000)) if variance == "large"
                     else q["posterior_variance"])
  expected[0] = 0.0  # no noise on the last step
  np.testing.assert_allclose(sigma, np.broadcast_to(expected[:, None], sigma.shape), rtol=2e-6,
                             atol=1e-12)


def gaussian_oracle(d, data_variance):
  """The exact epsilon model for data ~ N(0, data_variance I): E[eps | x_t], linear in x_t."""
  abar = jnp.asarray(d.alphas_cumprod, jnp.float32)

  def model_fn(xt, t):
    a = abar[t].reshape((-1,) + (1,) * (xt.ndim - 1))
    return jnp.sqrt(1 - a) * xt / (a * data_variance + 1 - a)

  return model_fn


def sampled_variance_recursion(betas, data_variance, variance):
  """Var of the ancestral sampler's output with the exact model on Gaussian data, float64.

  Every step maps x_t to (c1_t g_t + c2_t) x_t + sigma_t z, where g_t x_t = E[x_0 | x_t] =
  sqrt(abar_t) s^2 / (abar_t s^2 + 1 - abar_t) x_t and c1, c2 are the posterior mean's weights;
  from Var(x_T) = 1 the variance follows step by step.
  """
  var = 1.0
  alpha_bar = np.cumprod(1 - np.asarray(betas, np.float64))
  for t in reversed(range(len(betas))):
    beta, a = betas[t], alpha_bar[t]
    a_prev = alpha_bar[t - 1] if t else 1.0
    g = math.sqrt(a) * data_variance / (a * data_variance + 1 - a)
    c1, c2 = math.sqrt(a_prev) * beta / (1 - a), math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
    noise = 0.0 if t == 0 else beta if variance == "large" else (1 - a_prev) / (1 - a) * beta
    var = (c1 * g + c2) ** 2 * var + noise
  return var


def test_ddpm_sample_on_gaussian_data_has_the_float64_variance_of_its_fixed_variance():
  # The exact model of N(0, 0.04 I) data and 1000 linear steps: "small" (the posterior variance)
  # ends at 0.0385, "large" (betas, guided-diffusion's default) at 0.0404 (Nichol & Dhariwal:
  # the two bound the true reverse variance).
  d = make_diffusion("linear", 1000)
  shape = (8, 64, 64, 4)  # 131,072 independent pixels: a standard error of 0.4% on the variance
  expected = {variance: sampled_variance_recursion(reference_betas("linear", 1000), 0.04,
                                                   variance) for variance in ("small", "large")}
  assert expected["small"] == pytest.approx(0.03853, abs=1e-5)
  assert expected["large"] == pytest.approx(0.04037, abs=1e-5)
  samples = jax.jit(lambda key: {variance: diffusion.ddpm_sample(
      d, gaussian_oracle(d, 0.04), shape, key, clip_denoised=False, variance=variance)
                                  for variance in ("small", "large")})(jax.random.key(1))
  for variance, x in samples.items():
    x = np.asarray(x, np.float64)
    got = np.mean(x**2)
    tolerance = 5 * expected[variance] * math.sqrt(2 / x.size)  # five standard errors
    assert abs(np.mean(x)) < 5 * math.sqrt(expected[variance] / x.size)
    assert got == pytest.approx(expected[variance], abs=tolerance), variance
    other = expected["large" if variance == "small" else "small"]
    assert abs(got - other) > tolerance  # the other variance would fail: the test tells them apart


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_one_ddim_step_matches_numpy(rng, eta):
  d = make_diffusion("cosine", 1000)
  xt = 1.5 * draw(rng, (3, 5, 5, 1))
  t, t_prev = np.array([980, 500, 20]), np.array([960, 480, -1])  # -1: the last step
  key = jax.random.key(3)
  got = jax.jit(lambda *a: diffusion.ddim_step(d, fake_model, *a, eta=eta))(
      xt, jnp.asarray(t, jnp.int32), jnp.asarray(t_prev, jnp.int32), key)
  # DDIM eq. 12 with x_0 clipped and eps re-derived from it (guided-diffusion's ddim_sample).
  abar = np.cumprod(1 - d.betas)
  a = abar[t][:, None, None, None]
  ap = np.where(t_prev >= 0, abar[np.maximum(t_prev, 0)], 1.0)[:, None, None, None]
  x = xt.astype(np.float64)
  x0 = np.clip((x - np.sqrt(1 - a) * 0.1 * x) / np.sqrt(a), -1, 1)
  eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
  sigma = eta * np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)
  noise = np.asarray(jax.random.normal(key, xt.shape), np.float64)
  expected = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sigma**2) * eps + sigma * noise
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[2], x0[2], atol=1e-6)  # the last step returns x_0


def test_training_loss_is_the_noise_mse(rng):
  d = make_diffusion("linear", 37)
  x0 = draw(rng, (6, 8, 8, 3))
  key = jax.random.key(11)
  # The draws, as the module docstring says.
  t_key, noise_key = jax.random.split(key)
  t = np.asarray(jax.random.randint(t_key, (6,), 0, 37, dtype=jnp.int32))
  noise = np.asarray(jax.random.normal(noise_key, x0.shape), np.float64)

  def true_noise(xt, t_seen):
    del xt
    return jnp.asarray(noise, jnp.float32) + 0 * t_seen[:, None, None, None]

  # Zero up to the last bit of the normal draw, which XLA may compute in a fused kernel.
  assert float(jax.jit(lambda x0, k: diffusion.training_loss(d, true_noise, x0, k))(
      x0, key)) < 1e-12
  got = float(jax.jit(lambda x0, k: diffusion.training_loss(d, fake_model, x0, k))(x0, key))
  abar = np.cumprod(1 - d.betas)[t][:, None, None, None]
  xt = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
  assert got == pytest.approx(np.mean((0.1 * xt - noise) ** 2), rel=1e-5)


def test_training_loss_averages_over_uniform_timesteps():
  # With x_0 = 0 and a model that returns x_t = sqrt(1 - abar_t) eps, the expected loss is the
  # mean over t of (1 - sqrt(1 - abar_t))^2: it weighs t = 0 (about 0.9) against t = T - 1
  # (about 0), so drawing t from [1, T] or a non-uniform law would move it by > 0.02.
  d = make_diffusion("linear", 37)
  x0 = jnp.zeros((16384, 2, 2, 1))
  got = float(jax.jit(lambda k: diffusion.training_loss(d, lambda x, t: x, x0, k))(
      jax.random.key(4)))
  expected = np.mean((1 - d.sqrt_one_minus_alphas_cumprod) ** 2)
  assert got == pytest.approx(expected, abs=0.008)


def oracle(d, x0):
  """The perfect epsilon model for data that is the single image x0."""
  sqrt_abar = jnp.asarray(d.sqrt_alphas_cumprod, jnp.float32)
  sqrt_one_minus = jnp.asarray(d.sqrt_one_minus_alphas_cumprod, jnp.float32)

  def model_fn(xt, t):
    shape = (-1,) + (1,) * (xt.ndim - 1)
    return (xt - sqrt_abar[t].reshape(shape) * x0) / sqrt_one_minus[t].reshape(shape)

  return model_fn


def test_ddim_sample_with_the_oracle_returns_x0(rng):
  d = make_diffusion("linear", 1000)
  x0 = jnp.asarray(0.9 * draw(rng, (3, 8, 8, 2)))
  sample = jax.jit(lambda key: diffusion.ddim_sample(d, oracle(d, x0), x0.shape, key, 50))
  np.testing.assert_allclose(sample(jax.random.key(0)), x0, atol=1e-5)


def test_ddpm_sample_with_the_oracle_returns_x0(rng):
  d = make_diffusion("cosine", 37)
  x0 = jnp.asarray(0.9 * draw(rng, (2, 4, 4, 4, 1)))  # volumes
  sample = jax.jit(lambda key: diffusion.ddpm_sample(d, oracle(d, x0), x0.shape, key))
  np.testing.assert_allclose(sample(jax.random.key(0)), x0, atol=1e-5)


def test_ddpm_sample_is_the_documented_chain_of_steps(rng):
  d = make_diffusion("linear", 37)
  shape = (4, 4, 4, 1)
  key = jax.random.key(5)
  got = jax.jit(lambda key: diffusion.ddpm_sample(d, fake_model, shape, key))(key)
  init_key, steps_key = jax.random.split(key)
  x = jax.random.normal(init_key, shape)
  step = jax.jit(lambda x, t, k: diffusion.ddpm_step(d, fake_model, x, t, k))
  for timestep in reversed(range(37)):
    x = step(x, jnp.full((4,), timestep, jnp.int32), jax.random.fold_in(steps_key, timestep))
  np.testing.assert_allclose(got, x, atol=1e-5)


def test_ddim_sample_is_the_documented_chain_of_steps():
  d = make_diffusion("linear", 100)
  shape = (2, 4, 4, 1)
  key = jax.random.key(8)
  got = jax.jit(lambda key: diffusion.ddim_sample(d, fake_model, shape, key, 10, eta=0.5))(key)
  init_key, steps_key = jax.random.split(key)
  x = jax.random.normal(init_key, shape)
  timesteps = list(range(0, 100, 10))
  step = jax.jit(lambda x, t, t_prev, k: diffusion.ddim_step(d, fake_model, x, t, t_prev, k, 0.5))
  for i in reversed(range(10)):
    t_prev = timesteps[i - 1] if i else -1
    x = step(x, jnp.full((2,), timesteps[i], jnp.int32), jnp.full((2,), t_prev, jnp.int32),
             jax.random.fold_in(steps_key, i))
  np.testing.assert_allclose(got, x, atol=1e-5)


def test_ddim_timesteps_are_guided_diffusions_ddim_respacing():
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 50), np.arange(0, 1000, 20))
  np.testing.assert_array_equal(diffusion.ddim_timesteps(4000, 250), np.arange(0, 4000, 16))
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 1000), np.arange(1000))
  with pytest.raises(ValueError, match="integer stride"):
    diffusion.ddim_timesteps(1000, 999)


@pytest.mark.parametrize("explicit_axes", [True, False])
def test_sharded_loss_and_samples_equal_unsharded(rng, explicit_axes):
  if explicit_axes:
    mesh = parallel.data_mesh(4)  # jax.make_mesh: explicit axes
  else:
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  batch = parallel.rows_sharding(mesh)
  d = make_diffusion("linear", 37)
  x0 = draw(rng, (8, 4, 4, 2))
  key = jax.random.key(2)

  def loss(x0, key):
    return diffusion.training_loss(d, fake_model, x0, key)

  def samples(key, sharding=None):
    return (diffusion.ddpm_sample(d, fake_model, x0.shape, key, sharding=sharding),
            diffusion.ddim_sample(d, fake_model, x0.shape, key, 37, eta=1.0, sharding=sharding))

  expected_loss = jax.jit(loss)(x0, key)
  expected_samples = jax.jit(samples)(key)
  with jax.set_mesh(mesh):
    got_loss = jax.jit(loss)(jax.device_put(x0, batch), key)
    got_samples = jax.jit(samples, static_argnums=1)(key, batch)
  np.testing.assert_allclose(got_loss, expected_loss, rtol=1e-6)
  for got, expected in zip(got_samples, expected_samples):
    assert got.sharding.is_equivalent_to(batch, got.ndim)
    np.testing.assert_allclose(got, expected, atol=1e-6)
