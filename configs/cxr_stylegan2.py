r"""StyleGAN2 on the Kermany chest x-rays (pneumonia), 256x256, one channel.

  python launch.py --config=configs/cxr_stylegan2.py --workdir=runs/cxr_stylegan2
  python launch.py --config=configs/cxr_stylegan2.py --workdir=runs/cxr_stylegan2 \
      --config.workflow=sample

The GAN of Akbar, Wang & Eklund's comparison (MLST 2025) with their settings where they give
them: batch 32, mirror augmentation, 25,000 thousand images (781,250 steps of 32). They trained
NVlabs' StyleGAN3-t; this is StyleGAN2 (what the issue asks for: the GAN that the memorization
literature audits most), at stylegan2-ada-pytorch's defaults for 256x256 elsewhere: fmaps 0.5
(channel_base 16384, at most 512 channels), an 8-layer mapping network, lr 0.0025 with Adam
(0, 0.99), lazy R1 every 16 and path length every 4 steps, style mixing 0.9, EMA half-life
10 thousand images (batch x 10 / 32) with ramp-up 0.05, ADA toward 0.6 over 500 thousand
images. The paper gives no gamma for the x-rays: this uses the reference's 'auto' rule,
0.0002 x 256^2 / 32 = 0.41.

Prepare the data first (tools/prepare_data.py --dataset=cxr_pneumonia/256 --manual_dir=KERMANY).
"""

from configs import default


def paper_stylegan2(config, r1_gamma: float):
  """The seed paper's GAN settings, for 256x256 images."""
  config = default.stylegan2(config)
  config.workflow = "train"
  config.model.channel_base = 16384
  config.model.channel_max = 512
  config.loss.r1_gamma = r1_gamma
  config.data.mirror = True
  config.batch_size = 32
  config.ema_kimg = 10.0
  config.num_train_steps = 25_000_000 // 32
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.sample_every_steps = 10_000
  config.num_samples = 1000
  config.sample_batch_size = 64
  return config


def get_config():
  config = paper_stylegan2(default.get_config(), r1_gamma=0.0002 * 256**2 / 32)
  config.data.source = "tfds:cxr_pneumonia/256:train"
  return config
