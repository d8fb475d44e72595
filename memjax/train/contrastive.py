"""The contrastive encoder of Dar et al. on the shared loop: SimCLR's NT-Xent over augmented views.

Dar et al. ("Investigating data memorization in 3D latent diffusion models for medical image
synthesis", 2023; code Cardio-AI/memorization-ldm) train a self-supervised encoder on the
training images and compare embeddings, not pixels, to find copies that pixel correlation misses
(shifted, flipped, slightly rotated). Each step here:

* takes the global batch of training images (the loop splits it by rows over the devices) and
  draws one augmented view of each inside the jitted step: with probability
  `augment.affine_probability` a rotation of up to `augment.max_rotation_degrees` (about each
  axis of a volume), a translation of up to `augment.max_translation` of each side and a zoom of
  up to `augment.max_scale`, all by n-linear resampling with the image's minimum as fill (Dar
  et al.: rotation up to 5 degrees, p=0.5, minimum fill), a left-right flip with probability
  `augment.flip_probability` (0.5), then an intensity jitter (a * x + b) and Gaussian noise;
* embeds the originals and the views with one encoder (`memjax.models.encoder`), and minimises
  NT-Xent (Chen et al. 2020, pytorch-metric-learning's `NTXentLoss` as Dar et al. call it): for
  each of the 2N embeddings, the cross-entropy of picking its partner among the other 2N - 1 by
  cosine similarity over `contrastive.temperature` (0.07). The negatives are the other images of
  the *global* batch: the similarity matrix is computed over the whole batch inside jit, so it
  is gathered across devices, and 4 devices give the loss of 1.

`load_embedder` turns a trained checkpoint into a function of images as stored -> embeddings,
sharded over a data mesh, for `memjax.memorization.embedding`.

  python launch.py --config=configs/demo_contrastive.py --workdir=runs/demo_contrastive
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import pathlib
from typing import TYPE_CHECKING, Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax import parallel
from memjax.data import pipeline
from memjax.models import encoder as encoder_lib
from memjax.train import checkpoints
from memjax.train import inputs
from memjax.train import run_config
from memjax.train import state as state_lib

if TYPE_CHECKING:  # Configs are only read: a bare machine may lack ml_collections.
  import ml_collections

NAME = "contrastive"
CONFIG_FILE = run_config.CONFIG_FILE
_NORM_EPSILON = 1e-12  # torch.nn.functional.normalize's, which the reference loss uses


# ----------------------------------------------------------------------------------------------
# The loss.


def nt_xent(anchors: jax.Array, positives: jax.Array, temperature: float
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SimCLR's normalized temperature-scaled cross-entropy of N pairs of embeddings (N, D).

  Row i of `anchors` and row i of `positives` are a positive pair; every other of the 2N
  embeddings is a negative of both. Returns the mean over the 2N embeddings of
  -log(exp(s_ip / t) / sum_{k != i} exp(s_ik / t)), s the cosine similarity, and metrics: the mean
  cosine similarity of the positive pairs, and the share of embeddings whose partner is their
  most similar other embedding.
  """
  n = anchors.shape[0]
  z = jnp.concatenate([anchors, positives]).astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), _NORM_EPSILON)
  cosine = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST)
  others = ~jnp.eye(2 * n, dtype=bool)
  logits = jnp.where(others, cosine / temperature, -jnp.inf)
  partner = (jnp.arange(2 * n) + n) % (2 * n)
  positive_logit = jnp.take_along_axis(logits, partner[:, None], axis=1)[:, 0]
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive_logit)
  metrics = {
      "positive_similarity": jnp.mean(positive_logit) * temperature,
      "accuracy": jnp.mean(jnp.argmax(logits, axis=1) == partner),
  }
  return loss, metrics


# ----------------------------------------------------------------------------------------------
# The augmented view.


def resample(image: jax.Array, coordinates: jax.Array, fill: jax.Array) -> jax.Array:
  """n-linear interpolation of one image (*spatial, C) at `coordinates` (dims, *out_spatial).

  Coordinates are in input pixels (index units); a corner outside the image contributes `fill`
  (C,), so that the border fades into the fill value as bilinear resampling of a padded image.
  """
  dims = coordinates.shape[0]
  spatial = image.shape[:dims]
  channels = image.shape[-1]
  flat = image.reshape(-1, channels)
  strides = [math.prod(spatial[axis + 1:]) for axis in range(dims)]
  lower = jnp.floor(coordinates)
  fraction = coordinates - lower
  lower = lower.astype(jnp.int32)
  out = jnp.zeros(coordinates.shape[1:] + (channels,), image.dtype)
  for corner in itertools.product((0, 1), repeat=dims):
    weight = jnp.ones(coordinates.shape[1:], image.dtype)
    valid = jnp.ones(coordinates.shape[1:], bool)
    flat_index = jnp.zeros(coordinates.shape[1:], jnp.int32)
    for axis, offset in enumerate(corner):
      index = lower[axis] + offset
      weight = weight * (fraction[axis] if offset else 1.0 - fraction[axis])
      valid = valid & (index >= 0) & (index < spatial[axis])
      flat_index = flat_index + jnp.clip(index, 0, spatial[axis] - 1) * strides[axis]
    value = jnp.where(valid[..., None], flat[flat_index], fill)
    out = out + weight[..., None] * value
  return out


def _rotation(angles: jax.Array, dims: int) -> jax.Array:
  """A rotation matrix: one angle in 2D, or the product of rotations about each axis in 3D."""
  if dims == 2:
    cos, sin = jnp.cos(angles[0]), jnp.sin(angles[0])
    return jnp.array([[cos, -sin], [sin, cos]])
  matrix = jnp.eye(3)
  for axis in range(3):
    a, b = [i for i in range(3) if i != axis]
    cos, sin = jnp.cos(angles[axis]), jnp.sin(angles[axis])
    plane = jnp.eye(3).at[a, a].set(cos).at[a, b].set(-sin).at[b, a].set(sin).at[b, b].set(cos)
    matrix = plane @ matrix
  return matrix


def _one_view(image: jax.Array, key: jax.Array, options: ml_collections.ConfigDict
              ) -> jax.Array:
  """One augmented view of one image (*spatial, C) in [-1, 1]."""
  dims = image.ndim - 1
  spatial = jnp.array(image.shape[:-1], jnp.float32)
  keys = jax.random.split(key, 9)
  max_angle = math.radians(float(options.get("max_rotation_degrees", 0.0)))
  angles = jax.random.uniform(keys[0], (1 if dims == 2 else 3,), minval=-max_angle,
                              maxval=max_angle)
  max_translation = float(options.get("max_translation", 0.0))
  translation = jax.random.uniform(keys[1], (dims,), minval=-max_translation,
                                   maxval=max_translation) * spatial
  max_scale = float(options.get("max_scale", 0.0))
  log_zoom = jax.random.uniform(keys[2], (), minval=-math.log1p(max_scale),
                                maxval=math.log1p(max_scale))
  affine = jax.random.bernoulli(keys[3], float(options.get("affine_probability", 1.0)))
  # Output pixel o samples the input at centre + M (o - centre) + shift: rotated, zoomed by
  # exp(log_zoom) and shifted when `affine`, mirrored along the last spatial axis when `flip`.
  matrix = jnp.where(affine, _rotation(angles, dims) * jnp.exp(-log_zoom), jnp.eye(dims))
  shift = jnp.where(affine, translation, 0.0)
  flip = jax.random.bernoulli(keys[4], float(options.get("flip_probability", 0.0)))
  mirror = jnp.ones(dims).at[-1].set(jnp.where(flip, -1.0, 1.0))
  matrix = mirror[:, None] * matrix
  centre = (spatial - 1.0) / 2.0
  grid = jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=jnp.float32) for s in image.shape[:-1]],
                                indexing="ij"))
  offsets = grid.reshape(dims, -1) - centre[:, None]
  coordinates = (centre[:, None] + matrix @ offsets + shift[:, None]).reshape(grid.shape)
  fill = jnp.min(image.reshape(-1, image.shape[-1]), axis=0)
  view = resample(image, coordinates, fill)

  contrast = float(options.get("intensity_scale", 0.0))
  brightness = float(options.get("intensity_shift", 0.0))
  scale = 1.0 + jax.random.uniform(keys[5], (), minval=-contrast, maxval=contrast)
  offset = jax.random.uniform(keys[6], (), minval=-brightness, maxval=brightness)
  noise_std = jax.random.uniform(keys[7], (), maxval=float(options.get("noise_std", 0.0)))
  noise = noise_std * jax.random.normal(keys[8], view.shape)
  return scale * view + offset + noise


def augment(images: jax.Array, key: jax.Array, options: ml_collections.ConfigDict) -> jax.Array:
  """One augmented view of each image of a batch (N, *spatial, C), from `key` alone.

  options: affine_probability, max_rotation_degrees, max_translation (fraction of each side),
  max_scale (zoom in or out by up to 1 + max_scale), flip_probability (left-right),
  intensity_scale (contrast 1 +- this), intensity_shift (brightness +- this, images in [-1, 1]),
  noise_std (Gaussian noise of a standard deviation drawn up to this).
  """
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(functools.partial(_one_view, options=options))(images.astype(jnp.float32),
                                                                 keys)


# ----------------------------------------------------------------------------------------------
# The trainer.


def make_model(options: ml_collections.ConfigDict, image_shape: tuple[int, ...],
               rngs: nnx.Rngs) -> encoder_lib.Encoder:
  """The encoder of `options` (config.model) for images of shape (H, W, C) or (D, H, W, C)."""
  return encoder_lib.Encoder(
      in_channels=int(image_shape[-1]), spatial_shape=tuple(image_shape[:-1]),
      stem_channels=int(options.stem_channels), stem_kernel=int(options.stem_kernel),
      stem_stride=int(options.stem_stride), stem_pool=bool(options.stem_pool),
      stage_channels=tuple(options.stage_channels), stage_blocks=tuple(options.stage_blocks),
      block=options.block, pool=options.pool, flatten_channels=int(options.flatten_channels),
      head_hidden=int(options.head_hidden), embedding_dim=int(options.embedding_dim),
      antialias=bool(options.get("antialias", False)), dtype=state_lib.compute_dtype(options),
      rngs=rngs)


def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], key: jax.Array, *,
               augment_options: ml_collections.ConfigDict, temperature: float
               ) -> dict[str, jax.Array]:
  """One NT-Xent update: each image against its augmented view, the rest of the batch negative."""
  images = batch["image"]
  views = augment(images, key, augment_options)
  count = images.shape[0]

  def loss_fn(model):
    embeddings = model(jnp.concatenate([images, views]))
    return nt_xent(embeddings[:count], embeddings[count:], temperature)

  (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.model)
  state.apply_gradients(grads)
  return {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}


def make_trainer(config: ml_collections.ConfigDict) -> state_lib.Trainer:
  """The contrastive trainer of `config` (model.*, augment.*, contrastive.temperature, optimizer.*).

  It trains an encoder and generates no images (`generate` is None).
  """
  temperature = float(config.contrastive.temperature)
  if temperature <= 0:
    raise ValueError(f"--config.contrastive.temperature must be positive, not {temperature}")
  if int(config.batch_size) < 2:
    raise ValueError("--config.batch_size must be at least 2: NT-Xent needs other images of the "
                     "batch as negatives")
  for name in ("affine_probability", "flip_probability"):
    if not 0.0 <= float(config.augment.get(name, 0.0)) <= 1.0:
      raise ValueError(f"--config.augment.{name} must lie in [0, 1]")
  tx, schedule = state_lib.make_optimizer(config.optimizer, int(config.num_train_steps))

  def init_state(key: jax.Array, image_shape: tuple[int, ...]) -> state_lib.TrainState:
    model = make_model(config.model, image_shape, nnx.Rngs(params=key))
    return state_lib.TrainState(model, tx, float(config.get("ema_decay", 0.0)))

  return state_lib.Trainer(
      name=NAME, init_state=init_state,
      train_step=functools.partial(train_step, augment_options=config.augment,
                                   temperature=temperature),
      generate=None, learning_rate=schedule)


# ----------------------------------------------------------------------------------------------
# Embedding with a trained encoder.


class Embedder:
  """A trained encoder as a function: images as stored (N, *shape) -> float32 embeddings (N, D).

  Images arrive as an `ImageSource` reads them (uint8 0-255 or floats in [0, 1], a single channel
  with or without its axis), are mapped to [-1, 1] and averaged over the checkpoint's
  data.downsample blocks as in training, and are embedded in batches of `batch_size` split by
  rows over the mesh, by the EMA weights where the run kept them.
  """

  def __init__(self, compiled: state_lib.CompiledTrainer, state: Any, rngs: Any, step: int,
               meta: dict[str, Any], batch_size: int):
    self.step = int(step)
    self.data_shape = tuple(int(s) for s in meta["data_shape"])
    self.image_shape = compiled.image_shape  # What the model sees.
    self.description = f"contrastive encoder of {meta.get('data')} at step {step}"
    devices = parallel.mesh_size(compiled.mesh)
    self.batch_size = max(devices, -(-int(batch_size) // devices) * devices)
    self._state, self._rngs = state, rngs
    self._rows = compiled.rows
    factor = compiled.downsample_factor

    def embed(state, rngs, images):
      module = compiled.module(state, rngs)
      return module.sampling_model(inputs.downsample(images, factor))

    self._embed = jax.jit(embed, in_shardings=(compiled.replicated, compiled.replicated,
                                               compiled.rows), out_shardings=compiled.rows)
    self.embedding_dim = int(jax.eval_shape(
        embed, state, rngs,
        jax.ShapeDtypeStruct((self.batch_size, *self.data_shape), jnp.float32)).shape[-1])

  def _as_model_input(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    shape = tuple(images.shape[1:])
    if shape == self.data_shape[:-1] and self.data_shape[-1] == 1:
      images = images[..., None]
    elif shape != self.data_shape:
      raise ValueError(f"the encoder was trained on images of shape {self.data_shape}, got "
                       f"{shape}; embed images of its training data's shape")
    return pipeline.to_unit_range(images)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = self._as_model_input(images)
    out = []
    for start in range(0, len(images), self.batch_size):
      batch = images[start:start + self.batch_size]
      count = len(batch)
      if count < self.batch_size:
        batch = np.concatenate([batch, np.zeros((self.batch_size - count, *batch.shape[1:]),
                                                batch.dtype)])
      embedded = self._embed(self._state, self._rngs, jax.device_put(batch, self._rows))
      out.append(parallel.to_host(embedded)[:count].astype(np.float32))
    if not out:
      return np.zeros((0, self.embedding_dim), np.float32)
    return np.concatenate(out)


def load_embedder(workdir: str | pathlib.Path, config: ml_collections.ConfigDict | None = None,
                  *, mesh: jax.sharding.Mesh | None = None, step: int | None = None,
                  batch_size: int = 64) -> Embedder:
  """The encoder of the contrastive run in `workdir` (latest or `step`) as an `Embedder`.

  `config` is the run's; by default the config.json that `loop.train` writes into the work
  directory. The newest intact checkpoint is read (`checkpoints.restore`).

  Raises:
    FileNotFoundError: when `workdir` holds no checkpoint, or no config.json and none is given.
  """
  workdir = pathlib.Path(workdir)
  if config is None:
    path = workdir / CONFIG_FILE
    if not path.is_file():
      raise FileNotFoundError(f"{path} does not exist: give the encoder's config, or train it "
                              "with python launch.py --config=configs/demo_contrastive.py "
                              f"--workdir={workdir}")
    import ml_collections  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
  compiled, state, rngs, step, meta = checkpoints.restore(config, workdir, make_trainer(config),
                                                           mesh=mesh, step=step)
  return Embedder(compiled, state, rngs, step, meta, batch_size)
