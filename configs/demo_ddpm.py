r"""A small U-Net DDPM on the MNI152 slices that ship with the install: 5 minutes on a 2-core CPU.

  python launch.py --config=configs/demo_ddpm.py --workdir=runs/demo_ddpm
  python launch.py --config=configs/demo_ddpm.py --workdir=runs/demo_ddpm --config.workflow=sample
  python launch.py --config=configs/audit.py \
      --config.audit.synthetic_images=runs/demo_ddpm/samples \
      --config.audit.training_images=tfds:mni152/64:train \
      --config.audit.holdout_images=tfds:mni152/64:holdout --workdir=runs/demo_ddpm/audit

Not a setting of the paper: the setting of Akbar, Wang & Eklund (configs/brats20_ddpm.py) scaled
down until a 2-core CPU trains it in about five minutes. The 48 training slices of one template
brain (T1, grey and white matter as channels) are averaged to 32x32 as they are read
(data.downsample=2), the U-Net has 1.1 M parameters (32 channels, levels at 32, 16 and 8 pixels,
one residual block each, attention at 8 with heads of 32 channels, the timestep embedding added
rather than guided-diffusion's scale-shift norm), the schedule is cosine (better than linear at low
resolution, Nichol & Dhariwal 2021), and samples take 50 DDIM steps with eta=1 (stochastic
steps; deterministic DDIM leaves some samples noisy this early in training). Samples are written
at the data's 64x64, each pixel repeated 2x2, so that the audit compares them with
tfds:mni152/64:train as stored. After these 800 steps (about 5 minutes on the 2-core CPU) the
samples are recognisable axial slices, from the cerebellum to the ventricles, some with a grey
background; their best correlations with the training slices are 0.16-0.94 (median 0.75), under
the holdout threshold (neighbouring slices 2 mm apart correlate at 0.98-0.995): resembling, not
yet copied pixel for pixel. Train longer (--config.num_train_steps) to watch them approach.
"""

from configs import default


def get_config():
  config = default.ddpm(default.get_config())
  config.workflow = "train"
  config.data.source = "tfds:mni152/64:train"
  config.data.downsample = 2
  config.model.model_channels = 32
  config.model.channel_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (8,)
  config.model.num_head_channels = 32
  config.model.use_scale_shift_norm = False  # the model measured below
  config.diffusion.schedule = "cosine"
  config.diffusion.num_steps = 1000
  config.sample.method = "ddim"
  config.sample.num_steps = 50
  config.sample.eta = 1.0
  config.batch_size = 16
  config.num_train_steps = 800
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.ema_decay = 0.99
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.sample_every_steps = 400
  config.num_samples = 64
  config.sample_batch_size = 32
  return config
