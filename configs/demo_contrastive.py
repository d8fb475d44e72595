r"""A small contrastive encoder on the MNI152 slices that ship with the install: minutes on a CPU.

  python launch.py --config=configs/demo_contrastive.py --workdir=runs/demo_contrastive
  python tools/validate_detectors.py --workdir=runs/validate_detectors

Not a setting of the paper: Dar et al.'s 2D setting (configs/cxr_contrastive.py) scaled down
until a 2-core CPU trains it in 4-7 minutes (1,500 steps at 4-7 a second), and given the
invariances that the detector harness (tools/validate_detectors.py, which trains this config)
asks of it. The 48 training slices of one template brain (T1, grey and white matter as channels)
are averaged to 32x32 as they are read (data.downsample=2); the encoder is a ResNet of four
stages of one basic block (16-128 channels, 0.34 M parameters) with a 128-d embedding as
theirs, and it blur-pools every stride (model.antialias, Zhang 2019): without it, a copy moved
by a single pixel embeds noticeably apart from its original, and a third of the shifted copies
fall under the threshold. Every batch holds all 48 slices, so each embedding has the other 94 of
the batch as negatives, its neighbours 2 mm away among them. The augmented view covers what the harness
plants: rotation up to 12 degrees and translation up to 15% of the side on every view (Dar et
al.: 5 degrees on half the views, no translation), zoom up to 25% (for cropped copies), flip
with probability 0.5, contrast +-20%, brightness +-0.1 and noise up to 0.1 (for scaled and noisy
copies). Adam at 1e-3 (Dar et al.: 1e-4 for a pretrained ResNet-50) with a cosine decay to half
of it. After 1,500 steps NT-Xent is about 0.03 and 99.5% of the embeddings pick out their
partner among the 95 others. On the harness's planted copies the detector then finds all the
flipped and rotated ones and 94-98% of those shifted by 2-8 pixels (over two training seeds;
the misses are 7-8 pixel shifts) at Dar et al.'s threshold, which passes 6-8% of the held-out
slices (nominally 5%); 2,000 steps did no better.
"""

from configs import cxr_contrastive
from configs import default


def get_config():
  config = cxr_contrastive.dar_contrastive(default.get_config())
  config.data.source = "tfds:mni152/64:train"
  config.data.downsample = 2
  config.model.stem_channels = 16
  config.model.stem_kernel = 3
  config.model.stem_stride = 2
  config.model.stem_pool = False
  config.model.stage_channels = (16, 32, 64, 128)
  config.model.stage_blocks = (1, 1, 1, 1)
  config.model.block = "basic"
  config.model.head_hidden = 128
  config.model.embedding_dim = 128
  config.model.antialias = True
  config.batch_size = 48
  config.num_train_steps = 1500
  config.augment.affine_probability = 1.0
  config.augment.max_rotation_degrees = 12.0
  config.augment.max_translation = 0.15
  config.augment.max_scale = 0.25
  config.augment.noise_std = 0.1
  config.augment.intensity_scale = 0.2
  config.augment.intensity_shift = 0.1
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 50
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  return config
