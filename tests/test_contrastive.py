"""The contrastive family: NT-Xent against float64 numpy, the augmented view against scipy and by
its ranges, one step on 4 devices equal to 1, a tiny training whose encoder finds flipped copies,
the embedder's batching, and the paper configs."""

import functools
import json

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from configs import default
from memjax import parallel
from memjax import workflows
from memjax.data import pipeline
from memjax.train import contrastive
from memjax.train import inputs
from memjax.train import loop
from memjax.train import state as state_lib


def nt_xent_float64(anchors, positives, temperature):
  """NT-Xent as Chen et al. (2020) define it, one anchor at a time, in float64."""
  z = np.concatenate([anchors, positives]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(anchors)
  losses = []
  for i in range(2 * n):
    partner = (i + n) % (2 * n)
    others = [k for k in range(2 * n) if k != i]
    logits = np.array([z[i] @ z[k] for k in others]) / temperature
    positive = z[i] @ z[partner] / temperature
    losses.append(np.log(np.sum(np.exp(logits))) - positive)
  return float(np.mean(losses))


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nt_xent_matches_float64(temperature):
  rng = np.random.default_rng(0)
  anchors = rng.standard_normal((6, 5)).astype(np.float32)
  positives = (anchors + 0.8 * rng.standard_normal((6, 5))).astype(np.float32) * 3.0
  nt_xent = jax.jit(contrastive.nt_xent, static_argnums=2)
  loss, metrics = nt_xent(jnp.asarray(anchors), jnp.asarray(positives), temperature)
  want = nt_xent_float64(anchors, positives, temperature)
  assert want > 0.1 and float(loss) == pytest.approx(want, rel=1e-5)
  cosine = np.sum(anchors * positives, 1) / np.linalg.norm(anchors, axis=1) / np.linalg.norm(
      positives, axis=1)
  assert float(metrics["positive_similarity"]) == pytest.approx(cosine.mean(), abs=1e-5)
  # One pair: each embedding's only other is its partner, so the loss is exactly zero.
  single, _ = nt_xent(jnp.asarray(anchors[:1]), jnp.asarray(positives[:1]), 0.07)
  assert float(single) == pytest.approx(0.0, abs=1e-6)


@functools.lru_cache
def jitted_augment(overrides):
  options = ml_collections.ConfigDict(dict(
      affine_probability=1.0, max_rotation_degrees=0.0, max_translation=0.0, max_scale=0.0,
      flip_probability=0.0, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0))
  options.update(dict(overrides))
  return jax.jit(lambda x, k: contrastive.augment(x, k, options))


def augment(images, key, **overrides):
  """`contrastive.augment` under jit (one compilation, not one per operation), options given."""
  return np.asarray(jitted_augment(tuple(sorted(overrides.items())))(jnp.asarray(images), key))


@pytest.mark.parametrize("dims", [2, 3])
def test_resample_is_scipys_linear_interpolation(dims):
  rng = np.random.default_rng(1)
  image = rng.standard_normal((5,) * dims + (2,)).astype(np.float32)
  coordinates = rng.uniform(-1.5, 5.5, (dims,) + (4,) * dims).astype(np.float32)
  fill = np.array([-2.0, 3.0], np.float32)
  got = np.asarray(jax.jit(contrastive.resample)(image, coordinates, fill))
  for channel in range(2):
    # scipy pads the image with cval: corners outside contribute the fill, as here.
    want = scipy.ndimage.map_coordinates(image[..., channel].astype(np.float64),
                                         coordinates.astype(np.float64), order=1,
                                         mode="grid-constant", cval=fill[channel])
    np.testing.assert_allclose(got[..., channel], want, atol=1e-5)


def test_views_flip_and_jitter_within_their_ranges():
  images = np.random.default_rng(2).uniform(-1, 1, (64, 6, 6, 1)).astype(np.float32)
  flips = augment(images, jax.random.key(0), flip_probability=0.5)
  flipped = np.array([np.array_equal(v, np.flip(x, axis=1)) for v, x in zip(flips, images)])
  unchanged = np.array([np.array_equal(v, x) for v, x in zip(flips, images)])
  assert np.all(flipped ^ unchanged) and 16 < flipped.sum() < 48

  jitter = augment(images, jax.random.key(1), intensity_scale=0.2, intensity_shift=0.1)
  for view, image in zip(jitter, images):
    a, b = np.polyfit(image.ravel().astype(np.float64), view.ravel().astype(np.float64), 1)
    assert 0.8 - 1e-5 <= a <= 1.2 + 1e-5 and abs(b) <= 0.1 + 1e-5
  volumes = np.random.default_rng(5).uniform(-1, 1, (2, 3, 4, 5, 2)).astype(np.float32)
  np.testing.assert_array_equal(augment(volumes, jax.random.key(2), flip_probability=1.0),
                                np.flip(volumes, axis=3))  # left-right: the last spatial axis
  # The same key gives the same views.
  again = augment(images, jax.random.key(1), intensity_scale=0.2, intensity_shift=0.1)
  np.testing.assert_array_equal(again, jitter)


def moments(image):
  """Centroid (row, column) and principal-axis angle (degrees) of an image's mass above -1."""
  mass = image[..., 0].astype(np.float64) + 1.0
  rows, columns = np.indices(mass.shape)
  total = mass.sum()
  centre = np.array([np.sum(rows * mass), np.sum(columns * mass)]) / total
  dr, dc = rows - centre[0], columns - centre[1]
  covariance = np.array([[np.sum(dr * dr * mass), np.sum(dr * dc * mass)],
                         [np.sum(dr * dc * mass), np.sum(dc * dc * mass)]]) / total
  values, vectors = np.linalg.eigh(covariance)
  major = vectors[:, np.argmax(values)]
  return centre, np.degrees(np.arctan2(major[0], major[1])) % 180.0


def test_rotations_and_translations_stay_within_their_ranges():
  """Measured on a bar by its moments: views turn it by at most the maximum angle, and move its
  centroid by at most the maximum translation (fractions of the side)."""
  image = np.full((24, 24, 1), -1.0, np.float32)
  image[10:14, 6:18] = 1.0  # a horizontal bar about the centre
  batch = np.stack([image] * 16)
  centre, angle = moments(image)
  turned = augment(batch, jax.random.key(3), max_rotation_degrees=10.0)
  turns = np.array([(moments(v)[1] - angle + 90.0) % 180.0 - 90.0 for v in turned])
  assert np.abs(turns).max() <= 10.0 + 0.5 and np.abs(turns).max() > 5.0
  assert np.unique(np.round(turns, 2)).size == 16  # a fresh angle per image
  moved = augment(batch, jax.random.key(4), max_translation=0.125)
  shifts = np.array([moments(v)[0] - centre for v in moved])
  assert np.abs(shifts).max() <= 0.125 * 24 + 1e-3 and np.abs(shifts).max() > 1.5


def make_config(**overrides):
  """A contrastive encoder small enough to train in seconds on a CPU."""
  config = default.get_config()
  from configs import cxr_contrastive  # pylint: disable=g-import-not-at-top
  config = cxr_contrastive.dar_contrastive(config)
  config.model.update(dict(stem_channels=8, stem_kernel=3, stem_stride=1, stem_pool=False,
                           stage_channels=(8, 16), stage_blocks=(1, 1), block="basic",
                           head_hidden=16, embedding_dim=8))
  config.augment.update(dict(affine_probability=1.0, max_rotation_degrees=5.0,
                             max_translation=0.1, flip_probability=0.5, intensity_scale=0.05,
                             intensity_shift=0.05))
  config.batch_size = 8
  config.num_train_steps = 1
  config.progress = False
  config.data.num_threads = 2
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 5
  config.log_every_steps = 1000
  config.checkpoint_every_steps = 1000
  return default.override(config, overrides)


def eight_images() -> np.ndarray:
  """8 uint8 8x8 images of random 2x2 blocks, unlike each other."""
  blocks = np.random.default_rng(4).integers(0, 256, (8, 4, 4, 1))
  return blocks.repeat(2, axis=1).repeat(2, axis=2).astype(np.uint8)


def test_one_step_is_the_same_on_4_and_1_devices():
  config = make_config(**{"model.stage_channels": (8,), "model.stage_blocks": (2,)})
  images = pipeline.to_unit_range(eight_images())
  compiled = {devices: state_lib.CompiledTrainer(contrastive.make_trainer(config),
                                                 parallel.data_mesh(devices), images.shape[1:],
                                                 seed=0)
              for devices in (4, 1)}
  initial = compiled[4].init()  # one initialisation, copied to each mesh (the step donates it)
  starts = {devices: jax.device_put(initial, compiled[devices].replicated, may_alias=False)
            for devices in (1, 4)}
  results = []
  for devices in (4, 1):
    rngs, state = starts[devices]
    state, rngs, metrics = compiled[devices].step(
        state, rngs, {"image": jax.device_put(images, compiled[devices].rows)})
    results.append((jax.device_get(metrics), compiled[devices].module(state, rngs)))
  (metrics_4, four), (metrics_1, one) = results
  for key in ("loss", "accuracy", "positive_similarity", "grad_norm"):
    assert float(metrics_4[key]) == pytest.approx(float(metrics_1[key]), abs=1e-5)
  got = jax.tree.leaves(nnx.state(four.model, nnx.Param))
  want = jax.tree.leaves(nnx.state(one.model, nnx.Param))
  assert len(got) == len(want) > 10
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def as_data(images: np.ndarray) -> inputs.TrainingData:
  return inputs.TrainingData([{"image": image} for image in images], images.shape[1:],
                             images.dtype, "eight images")


def test_trained_encoder_finds_flipped_copies_and_embeds_in_batches(tmp_path):
  """After a short training, a flipped copy of each image is nearest its own image's embedding;
  the embedder pads, shards and slices its batches without changing an embedding."""
  images = eight_images()
  config = make_config(num_train_steps=100, **{"augment.max_rotation_degrees": 0.0,
                                              "augment.max_translation": 0.0})
  mesh = parallel.data_mesh(1)
  result = loop.train(config, tmp_path, contrastive.make_trainer(config), data=as_data(images),
                      mesh=mesh)
  assert result.metrics["accuracy"] > 0.9

  saved = (tmp_path / "config.json").read_text()  # loop.train leaves the run's config
  assert json.loads(saved) == json.loads(config.to_json_best_effort())
  (tmp_path / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match="config.json"):
    contrastive.load_embedder(tmp_path)
  (tmp_path / "config.json").write_text(saved)
  embedder = contrastive.load_embedder(tmp_path, batch_size=3)  # 4 devices: batches of 4
  assert embedder.batch_size == 4 and embedder.embedding_dim == 8 and embedder.step == 100
  flipped = images[:, :, ::-1]
  embedded = embedder(np.concatenate([images, flipped])[..., 0])  # gray images without an axis
  assert embedded.shape == (16, 8) and embedded.dtype == np.float32
  direct = np.asarray(nnx.jit(lambda m, x: m(x))(result.state.model,
                                                  jnp.asarray(pipeline.to_unit_range(images))))
  np.testing.assert_allclose(embedded[:8], direct, atol=1e-5)
  centred = embedded - embedded.mean(axis=1, keepdims=True)
  centred /= np.linalg.norm(centred, axis=1, keepdims=True)
  similarity = centred[8:] @ centred[:8].T  # flipped copies against the originals
  np.testing.assert_array_equal(np.argmax(similarity, axis=1), np.arange(8))
  with pytest.raises(ValueError, match=r"trained on images of shape \(8, 8, 1\)"):
    embedder(np.zeros((2, 4, 4), np.uint8))

  # The audit workflow with both detectors: the flipped copies are the embedding's finds.
  np.save(tmp_path / "train.npy", images)
  np.save(tmp_path / "flipped.npy", flipped)
  audit_config = default.override(default.get_config(), {
      "synthetic": str(tmp_path / "flipped.npy"), "train": str(tmp_path / "train.npy"),
      "audit.detector": "both", "audit.encoder": str(tmp_path), "audit.k": 1,
      "audit.threshold": 0.9, "audit.num_pairs": 2, "audit.progress": False})
  summary = workflows.run(audit_config, tmp_path / "audit")
  assert summary["detectors"]["embedding"]["encoder"] == embedder.description
  np.testing.assert_array_equal(
      np.load(tmp_path / "audit" / "correlations.npz")["embedding_indices"][:, 0], np.arange(8))
  expected = similarity.max(axis=1) >= 0.9
  assert summary["detectors"]["embedding"]["num_memorized"] == expected.sum() > 0
  assert summary["agreement"]["memorized_by_embedding_only"] == expected.sum()
  with pytest.raises(ValueError, match="needs a trained contrastive encoder"):
    workflows.run(default.override(audit_config, {"audit.encoder": ""}), tmp_path / "audit")


def test_trainer_generates_nothing_and_checks_its_settings():
  trainer = contrastive.make_trainer(make_config())
  assert trainer.name == "contrastive" and trainer.generate is None
  with pytest.raises(ValueError, match="temperature"):
    contrastive.make_trainer(make_config(**{"contrastive.temperature": 0.0}))
  with pytest.raises(ValueError, match="batch_size"):
    contrastive.make_trainer(make_config(batch_size=1))
  with pytest.raises(ValueError, match="flip_probability"):
    contrastive.make_trainer(make_config(**{"augment.flip_probability": 1.5}))


def test_configs_follow_dar_et_al():
  from configs import brats20_contrastive  # pylint: disable=g-import-not-at-top
  from configs import brats20_contrastive_3d  # pylint: disable=g-import-not-at-top
  from configs import cxr_contrastive  # pylint: disable=g-import-not-at-top
  from configs import demo_contrastive  # pylint: disable=g-import-not-at-top
  for module, source in ((cxr_contrastive, "tfds:cxr_pneumonia/256:train"),
                         (brats20_contrastive, "tfds:brats2020/slices:train")):
    config = module.get_config()
    assert config.data.source == source and config.model.name == "contrastive"
    assert config.model.stage_blocks == (3, 4, 6, 3) and config.model.block == "bottleneck"
    assert (config.model.embedding_dim, config.contrastive.temperature) == (128, 0.07)
    assert (config.optimizer.learning_rate, config.optimizer.schedule,
            config.optimizer.final_learning_rate_fraction) == (1e-4, "cosine", 0.5)
    assert (config.augment.max_rotation_degrees, config.augment.flip_probability,
            config.augment.affine_probability) == (5.0, 0.5, 0.5)
  config = brats20_contrastive_3d.get_config()
  assert config.data.source == "tfds:brats2020/volumes:train"
  model = nnx.eval_shape(lambda: contrastive.make_model(
      config.model, (40, 60, 60, 5), nnx.Rngs(0)))
  assert model.dims == 3 and model.embedding_dim == 32 and model.pool == "flatten"
  assert model.head_hidden.kernel.shape[1] == 128
  config = demo_contrastive.get_config()
  assert config.data.source == "tfds:mni152/64:train" and config.workflow == "train"
  assert "python launch.py --config=configs/demo_contrastive.py" in demo_contrastive.__doc__
