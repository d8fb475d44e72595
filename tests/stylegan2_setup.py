"""The tiny StyleGAN2 configuration and images that the StyleGAN2 training tests share."""

import numpy as np

from configs import default

SIZE = 8


def make_config(**overrides):
  """StyleGAN2 at 8x8 with 16-channel layers: compiles in seconds, steps in milliseconds."""
  config = default.stylegan2(default.get_config())
  config.workflow = "train"
  config.model.z_dim = config.model.w_dim = 16
  config.model.map_layers = 2
  config.model.channel_base = 64
  config.model.channel_max = 16
  config.batch_size = 8
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.async_checkpoints = False
  config.progress = False
  config.data.num_threads = 1
  config.loss.r1_gamma = 1.0
  config.loss.r1_interval = 4
  config.loss.pl_interval = 2
  config.num_samples = 12
  config.sample_batch_size = 8
  return default.override(config, overrides)


def training_images(count=8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, SIZE, SIZE, 1)).astype(np.uint8)
