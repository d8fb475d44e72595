r"""A small StyleGAN2 on the MNI152 slices that ship with the install: minutes on a 2-core CPU.

  python launch.py --config=configs/demo_stylegan2.py --workdir=runs/demo_stylegan2
  python launch.py --config=configs/demo_stylegan2.py --workdir=runs/demo_stylegan2 \
      --config.workflow=sample

Not a setting of the paper: stylegan2-ada-pytorch's training (lazy R1, path length, style mixing,
ADA) scaled down until a 2-core CPU trains it in a few minutes. The 48 training slices of one
template brain (T1, grey and white matter as channels) are averaged to 32x32 as they are read
(data.downsample=2); G and D have at most 64 channels (channel_base 1024), z and w 128
dimensions; R1's gamma follows the reference's 'auto' rule (0.0002 x 32^2 / batch, rounded up);
ADA moves p over 10 thousand images rather than 500 so that it can react within so short a run.
Samples are written at the data's 64x64, each pixel repeated 2x2, so that the audit compares them
with tfds:mni152/64:train as stored.
"""

from configs import default


def get_config():
  config = default.stylegan2(default.get_config())
  config.workflow = "train"
  config.data.source = "tfds:mni152/64:train"
  config.data.downsample = 2
  config.data.mirror = False  # A brain's left and right are not interchangeable here.
  config.model.z_dim = 128
  config.model.w_dim = 128
  config.model.channel_base = 1024
  config.model.channel_max = 64
  config.loss.r1_gamma = 0.05
  config.ada.kimg = 10.0
  config.batch_size = 16
  config.ema_kimg = 5.0
  config.num_train_steps = 1000
  config.log_every_steps = 50
  config.checkpoint_every_steps = 250
  config.sample_every_steps = 500
  config.num_samples = 64
  config.sample_batch_size = 32
  return config
