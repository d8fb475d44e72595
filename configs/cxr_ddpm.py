r"""The paper's DDPM on the Kermany chest x-rays (pneumonia), 256x256, one channel.

  python launch.py --config=configs/cxr_ddpm.py --workdir=runs/cxr_ddpm
  python launch.py --config=configs/cxr_ddpm.py --workdir=runs/cxr_ddpm --config.workflow=sample

Follows Akbar, Wang & Eklund ("Beware of diffusion models for synthesizing medical images", MLST
2025), who trained OpenAI's guided-diffusion with only these flags: --image_size 256
--num_channels 64 --num_res_blocks 3 --diffusion_steps 4000 --noise_schedule linear --lr 1e-4
--batch_size 32. Everything else is guided-diffusion's `model_and_diffusion_defaults()` and
training defaults (configs/default.py's `ddpm`): channel_mult (1, 1, 2, 2, 4, 4) for 256,
attention at 16 and 8 (and in the middle block) with 4 heads per layer (num_heads 4,
num_head_channels -1), scale-shift norm, up- and downsampling by convolutions (resblock_updown
off), the legacy attention order, dropout 0, learn_sigma off, ema_rate 0.9999, AdamW without
weight decay, no warm-up, no gradient clipping. The U-Net has 41,121,025 parameters for one
channel (tests/test_unet.py counts them as guided-diffusion builds its layers). One difference:
guided-diffusion's loader converts every image to RGB and its `create_model` fixes 3 channels,
while memjax trains on the data's channels (1 here). The paper does not say how long it
trained: set num_train_steps. Sampling uses all 4000 ancestral steps with the
FIXED_LARGE variance (betas), as guided-diffusion samples with learn_sigma and sigma_small off;
--config.sample.method=ddim --config.sample.num_steps=100 is about 40 times faster.

Prepare the data first (tools/prepare_data.py --dataset=cxr_pneumonia/256 --manual_dir=KERMANY).
"""

from configs import default


def paper_ddpm(config):
  """The seed paper's guided-diffusion run, for 256x256 images: its flags over its defaults."""
  config = default.ddpm(config)
  config.workflow = "train"
  # The authors' flags.
  config.model.model_channels = 64
  config.model.num_res_blocks = 3
  config.diffusion.schedule = "linear"
  config.diffusion.num_steps = 4000
  config.optimizer.learning_rate = 1e-4
  config.batch_size = 32
  # guided-diffusion's defaults, stated so that the paper's run reads whole here.
  config.model.channel_mult = (1, 1, 2, 2, 4, 4)  # its choice for image_size 256
  config.model.attention_resolutions = (16, 8)
  config.model.num_heads = 4
  config.model.num_head_channels = -1
  config.model.use_scale_shift_norm = True
  config.model.resblock_updown = False
  config.model.use_new_attention_order = False
  config.model.dropout = 0.0
  config.sample.method = "ddpm"
  config.sample.variance = "large"  # FIXED_LARGE: learn_sigma and sigma_small off
  config.sample.num_steps = 0
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.weight_decay = 0.0
  config.ema_decay = 0.9999
  # memjax's run length and outputs (the paper gives none).
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
