r"""The paper's DDPM on the Kermany chest x-rays (pneumonia), 256x256, one channel.

  python launch.py --config=configs/cxr_ddpm.py --workdir=runs/cxr_ddpm
  python launch.py --config=configs/cxr_ddpm.py --workdir=runs/cxr_ddpm --config.workflow=sample

Follows Akbar, Wang & Eklund ("Beware of diffusion models for synthesizing medical images", MLST
2025), who trained OpenAI's guided-diffusion with image_size 256, num_channels 64,
num_res_blocks 3, diffusion_steps 4000, noise_schedule linear, lr 1e-4, batch_size 32,
ema_rate 0.9999; the rest is guided-diffusion's defaults at 256: channel_mult (1, 1, 2, 2, 4, 4),
attention at 32, 16 and 8, dropout 0, AdamW without weight decay, no warm-up, no gradient
clipping. Heads have 64 channels here (guided-diffusion's default is 4 heads per layer; the
parameter count is the same). The paper does not say how long it trained: set num_train_steps.
Sampling uses all 4000 ancestral steps as guided-diffusion does; --config.sample.method=ddim
--config.sample.num_steps=100 is about 40 times faster.

Prepare the data first (tools/prepare_data.py --dataset=cxr_pneumonia/256 --manual_dir=KERMANY).
"""

from configs import default


def paper_ddpm(config):
  """The seed paper's guided-diffusion settings, for 256x256 images."""
  config = default.ddpm(config)
  config.workflow = "train"
  config.model.model_channels = 64
  config.model.channel_mult = (1, 1, 2, 2, 4, 4)
  config.model.num_res_blocks = 3
  config.model.attention_resolutions = (32, 16, 8)
  config.model.num_head_channels = 64
  config.model.dropout = 0.0
  config.diffusion.schedule = "linear"
  config.diffusion.num_steps = 4000
  config.sample.method = "ddpm"
  config.sample.num_steps = 0
  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.weight_decay = 0.0
  config.batch_size = 32
  config.ema_decay = 0.9999
  config.num_train_steps = 200_000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.sample_every_steps = 10_000
  config.num_samples = 1000
  config.sample_batch_size = 64
  return config


def get_config():
  config = paper_ddpm(default.get_config())
  config.data.source = "tfds:cxr_pneumonia/256:train"
  return config
