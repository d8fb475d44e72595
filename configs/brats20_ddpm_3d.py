r"""A small 3D U-Net DDPM on whole BraTS 2020 volumes, at 4 mm voxels: (40, 60, 60) x 5 channels.

  python launch.py --config=configs/brats20_ddpm_3d.py --workdir=runs/brats20_ddpm_3d
  python launch.py --config=configs/brats20_ddpm_3d.py --workdir=runs/brats20_ddpm_3d \
      --config.workflow=sample

Not a setting of the paper, which trains on 2D slices; the 3D counterpart that Akbar, Wang &
Eklund and Dar et al. warn about (volumes memorize differently from slices). The
(160, 240, 240) volumes of `brats2020/volumes` are averaged over 4x4x4 blocks as they are read
(data.downsample), and a 3D U-Net of the paper's family (the 2D model's layers with 3D
convolutions, and the paper's guided-diffusion settings: 4 attention heads per layer,
scale-shift norm; but 32 channels, levels (1, 2, 4) at 60, 30 and 15 voxels, one residual block
each, attention only in the middle) is trained with the paper's diffusion (4000 linear steps),
learning rate, and EMA, at batch 4. Samples take 100 DDIM steps (--config.sample.method=ddpm for
all 4000 ancestral steps, with the paper's FIXED_LARGE variance) and are written at the data's
(160, 240, 240) shape with each voxel repeated 4x4x4, so that the audit compares them with the
volumes as stored.

Prepare the data first (tools/prepare_data.py --dataset=brats2020/volumes --manual_dir=BRATS).
"""

from configs import cxr_ddpm
from configs import default


def get_config():
  config = cxr_ddpm.paper_ddpm(default.get_config())
  config.data.source = "tfds:brats2020/volumes:train"
  config.data.downsample = 4
  config.model.model_channels = 32
  config.model.channel_mult = (1, 2, 4)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = ()
  config.batch_size = 4
  config.sample.method = "ddim"
  config.sample.num_steps = 100
  config.num_samples = 100
  config.sample_batch_size = 4
  config.grid_size = 4
  return config
