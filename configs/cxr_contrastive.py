r"""Dar et al.'s 2D contrastive encoder on the Kermany chest x-rays (pneumonia): 256x256, 1 channel.

  python launch.py --config=configs/cxr_contrastive.py --workdir=runs/cxr_contrastive

Follows the 2D setting of Dar et al. ("Investigating data memorization in 3D latent diffusion
models for medical image synthesis", 2023; train_selfsupervised2D.py of
Cardio-AI/memorization-ldm), who trained on NIH chest x-rays at 512x512: a ResNet-50 with a
1-channel stem whose last layer maps its 2048 features to a 128-d embedding, NT-Xent at
temperature 0.07 between each image and an augmented view of it (rotation up to 5 degrees with
probability 0.5, left-right flip with probability 0.5), the rest of a batch of 64 as negatives,
Adam at 1e-4 with a cosine decay to half of it, 200 epochs (5,216 training images: 16,300
steps). Differences: GroupNorm for BatchNorm and no ImageNet initialisation
(memjax/models/encoder.py), and a mild intensity jitter (contrast 1 +- 0.05, brightness +- 0.05
on [-1, 1]) that their commented-out RandomGamma hints at.
Prepare the data first (tools/prepare_data.py --dataset=cxr_pneumonia/256 --manual_dir=KERMANY).
"""

import ml_collections

from configs import default


def dar_contrastive(config, dims: int = 2):
  """Dar et al.'s contrastive encoder settings: 2D ResNet-50 -> 128-d, or their 3D trunk -> 32-d."""
  config.workflow = "train"
  config.model.name = "contrastive"
  if dims == 2:
    config.model.stem_channels = 64
    config.model.stem_kernel = 7
    config.model.stem_stride = 2
    config.model.stem_pool = True
    config.model.stage_channels = (64, 128, 256, 512)
    config.model.stage_blocks = (3, 4, 6, 3)  # ResNet-50
    config.model.block = "bottleneck"
    config.model.pool = "mean"
    config.model.flatten_channels = 8
    config.model.head_hidden = 0  # one linear map 2048 -> 128
    config.model.antialias = False  # blur pooling (Zhang 2019); theirs has none
    config.model.embedding_dim = 128
    config.batch_size = 64
  else:
    # The VQ-GAN encoder trunk (16 channels, doubling at every stride-2 stage, a residual block
    # each), a 1x1x1 conv to 8 channels, the grid flattened, 128 hidden units, 32 dimensions.
    config.model.stem_channels = 16
    config.model.stem_kernel = 3
    config.model.stem_stride = 1
    config.model.stem_pool = False
    config.model.stage_channels = (32, 64, 128)
    config.model.stage_blocks = (1, 1, 1)
    config.model.block = "basic"
    config.model.pool = "flatten"
    config.model.flatten_channels = 8
    config.model.head_hidden = 128
    config.model.embedding_dim = 32
    config.model.antialias = False
    config.batch_size = 8

  config.contrastive = ml_collections.ConfigDict()
  config.contrastive.temperature = 0.07

  config.augment = ml_collections.ConfigDict()
  config.augment.affine_probability = 0.5
  config.augment.max_rotation_degrees = 5.0
  config.augment.max_translation = 0.0  # fraction of each side
  config.augment.max_scale = 0.0  # zoom by up to 1 + this, in or out
  config.augment.flip_probability = 0.5
  config.augment.intensity_scale = 0.05  # contrast 1 +- this
  config.augment.intensity_shift = 0.05  # brightness +- this, images in [-1, 1]
  config.augment.noise_std = 0.0

  config.optimizer.learning_rate = 1e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.final_learning_rate_fraction = 0.5
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.weight_decay = 0.0
  config.ema_decay = 0.0
  config.sample_every_steps = 0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  return config


def get_config():
  config = dar_contrastive(default.get_config())
  config.data.source = "tfds:cxr_pneumonia/256:train"
  config.num_train_steps = 16_300  # 200 epochs of 5,216 images at batch 64
  return config
