"""StyleGAN2's training step: the same on 4 and 1 devices, named keys per phase, ADA's p.

(Split from test_stylegan2.py, so that the two parallel test workers share the compilation of
StyleGAN2's step variants, the slowest part of the suite.)
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import parallel
from memjax.data import pipeline
from memjax.train import state as state_lib
from memjax.train import stylegan2
from stylegan2_setup import make_config, SIZE, training_images  # pylint: disable=g-multiple-import


def test_one_step_is_the_same_on_4_and_1_devices():
  # Every phase runs; the augmentation's own sharded run is checked in test_augment.py.
  config = make_config(**{"ada.augment": "none"})
  images = pipeline.to_unit_range(training_images())
  results = []
  for devices in (4, 1):
    compiled = state_lib.CompiledTrainer(stylegan2.make_trainer(config),
                                         parallel.data_mesh(devices), images.shape[1:], seed=0)
    rngs, state = compiled.init()
    state, rngs, metrics = compiled.step(state, rngs,
                                         {"image": jax.device_put(images, compiled.rows)})
    results.append((jax.device_get(metrics), compiled.module(state, rngs)))
  (metrics_4, four), (metrics_1, one) = results
  for key in ("loss_G", "loss_D", "pl_penalty", "r1_penalty"):
    assert np.isfinite(metrics_1[key])
    assert float(metrics_4[key]) == pytest.approx(float(metrics_1[key]), rel=1e-5, abs=1e-6)
  for name in ("generator", "generator_ema", "discriminator"):
    got = jax.tree.leaves(nnx.state(getattr(four, name)))
    want = jax.tree.leaves(nnx.state(getattr(one, name)))
    assert len(got) == len(want) > 10
    for a, b in zip(got, want):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
  assert float(one.pl_mean[...]) > 0  # The path-length mean moved off 0.


def test_each_phase_gets_the_same_named_keys_whichever_phases_run(monkeypatch):
  """The keys handed to each phase depend on the step key and the phase alone: recorded with the
  phases replaced by recorders, they are the same in every variant of the step (a step with the
  regularizers draws Gmain's and Dmain's numbers as one without them), and no two draws share a
  key. Drawn from one stream in call order, skipping Greg would hand Dmain other fakes."""
  config = make_config(**{"ada.augment": "none", "data.mirror": True})
  settings = stylegan2._Settings(config)
  trainer = stylegan2.make_trainer(config)
  # The state's structure with zeros for values (no weights drawn: the phases never run).
  graphdef, shapes = nnx.split(nnx.eval_shape(
      lambda: trainer.init_state(jax.random.key(0), (SIZE, SIZE, 1))))
  state = nnx.merge(graphdef, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
  batch = {"image": jnp.zeros((8, SIZE, SIZE, 1))}
  key = jax.random.key(7)
  seen = {}

  def recorder(phase, keys_at, result):
    def record(*args):
      seen[phase] = {k: tuple(np.asarray(jax.random.key_data(v)).ravel())
                     for k, v in args[keys_at].items()}
      return result
    return record

  zero, signs = jnp.float32(0), jnp.asarray([1.0, 8.0])
  monkeypatch.setattr(stylegan2, "mirror", recorder("mirror", 1, batch["image"]))
  monkeypatch.setattr(stylegan2, "g_main", recorder("Gmain", 2, zero))
  monkeypatch.setattr(stylegan2, "g_reg", recorder("Greg", 2, zero))
  monkeypatch.setattr(stylegan2, "d_main", recorder("Dmain", 2, (zero, signs)))
  monkeypatch.setattr(stylegan2, "d_reg", recorder("Dreg", 2, (zero, signs)))
  monkeypatch.setattr(stylegan2, "update_ema", lambda *args: None)  # Draws nothing.
  runs = []
  for variant in ((False, False), (True, False), (False, True), (True, True)):
    seen.clear()
    stylegan2.train_step(state, batch, key, settings=settings, variant=variant)
    due = {"Greg": variant[0], "Dreg": variant[1]}
    assert set(seen) == {phase for phase in stylegan2._DRAWS if due.get(phase, True)}
    runs.append(dict(seen))
  for phase in stylegan2._DRAWS:
    recorded = [run[phase] for run in runs if phase in run]
    assert recorded and all(r == recorded[0] for r in recorded), phase
  every = [k for run in runs[-1].values() for k in run.values()]
  assert len(set(every)) == len(every) == sum(len(d) for d in stylegan2._DRAWS.values())


def test_ada_raises_p_when_d_overfits_and_keeps_it_near_0_when_it_cannot():
  """G is frozen (learning rate 0). Overfitting: 8 fixed real images, which D learns to tell from
  G's images, so its outputs on reals turn positive and p rises. Cannot overfit: the "real"
  images are fresh samples of the same frozen G every step, so no D can tell them apart."""
  config = make_config(**{"optimizer.learning_rate": 0.0, "optimizer.d_learning_rate": 0.01,
                          "ada.kimg": 0.32, "loss.pl_weight": 0.0, "loss.r1_gamma": 0.0,
                          "loss.style_mixing_prob": 0.0})  # One step variant to compile.
  compiled = state_lib.CompiledTrainer(stylegan2.make_trainer(config), parallel.data_mesh(1),
                                       (SIZE, SIZE, 1), seed=0)
  fixed = pipeline.to_unit_range(training_images())
  frozen = compiled.module(*compiled.init()).generator
  sample_g = nnx.jit(lambda generator, z, key: generator(z, key))  # As the training draws fakes.
  trajectories = {}
  for case in ("overfit", "cannot"):
    rngs, state = compiled.init()
    p = []
    for i in range(48):
      if case == "overfit":
        reals = fixed
      else:
        key = jax.random.key(1000 + i)
        reals = sample_g(frozen, jax.random.normal(key, (8, 16)), jax.random.fold_in(key, 1))
      state, rngs, metrics = compiled.step(state, rngs, {"image": reals}, i)
      p.append(float(metrics["augment_p"]))
    trajectories[case] = np.asarray(p)
  # Each adjustment moves p by 8 x 4 / 320 = 0.1, every 4 steps.
  assert trajectories["overfit"][-1] >= 0.5, trajectories["overfit"]
  assert trajectories["cannot"].max() <= 0.2, trajectories["cannot"]
