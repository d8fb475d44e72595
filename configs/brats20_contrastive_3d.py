r"""Dar et al.'s 3D contrastive encoder on whole BraTS 2020 volumes, 4 mm voxels: (40, 60, 60) x 5.

  python launch.py --config=configs/brats20_contrastive_3d.py \
      --workdir=runs/brats20_contrastive_3d

The 3D setting of Dar et al. (2023; train_selfsupervised3D.py of Cardio-AI/memorization-ldm),
who embed MRNet and PCCTA volumes: the VQ-GAN encoder trunk (a 16-channel conv, then stride-2
stages of doubling width, one residual block each), a 1x1x1 conv to 8 channels, the grid
flattened, 128 hidden units and a 32-d embedding; NT-Xent at temperature 0.07 (the default of
their loss) between each volume and its augmented view (rotation up to 5 degrees about each axis
with probability 0.5, left-right flip with probability 0.5), the rest of a batch of 10 as
negatives, Adam at 1e-4 with a cosine decay to half of it, 200 epochs. Here: the (160, 240, 240)
volumes of `brats2020/volumes` are averaged over 4x4x4 blocks as they are read
(data.downsample), as configs/brats20_ddpm_3d.py trains its 3D DDPM; three stages take
(40, 60, 60) to a (5, 8, 8) grid (Dar et al.'s is 4x4x4 on their volumes), so the head reads
8 x 320 = 2,560 features; GroupNorm throughout, no dropout in the head (theirs: 0.5), a batch of
8 (a multiple of the devices); 200 epochs of the 313 training subjects are about 7,800 steps.
Prepare the data first (tools/prepare_data.py --dataset=brats2020/volumes --manual_dir=BRATS).
"""

from configs import cxr_contrastive
from configs import default


def get_config():
  config = cxr_contrastive.dar_contrastive(default.get_config(), dims=3)
  config.data.source = "tfds:brats2020/volumes:train"
  config.data.downsample = 4
  config.num_train_steps = 7_800  # 200 epochs of 313 volumes at batch 8
  config.checkpoint_every_steps = 1000
  return config
