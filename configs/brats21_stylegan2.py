r"""StyleGAN2 on BraTS 2021 axial slices: 256x256, five channels (t1, t2, flair, t1ce, seg).

  python launch.py --config=configs/brats21_stylegan2.py --workdir=runs/brats21_stylegan2
  python launch.py --config=configs/brats21_stylegan2.py --workdir=runs/brats21_stylegan2 \
      --config.workflow=sample

Follows Akbar, Wang & Eklund (MLST 2025) on BraTS 2021: batch 32, R1 gamma 10, mirror
augmentation, 25,000 thousand images, on the slices of the 1195 training subjects (see
memjax/data/brats.py); they trained StyleGAN3-t, this is StyleGAN2 at stylegan2-ada-pytorch's
defaults elsewhere (configs/cxr_stylegan2.py's `paper_stylegan2`).

Prepare the data first (tools/prepare_data.py --dataset=brats2021/slices --manual_dir=BRATS).
"""

from configs import cxr_stylegan2
from configs import default


def get_config():
  config = cxr_stylegan2.paper_stylegan2(default.get_config(), r1_gamma=10.0)
  config.data.source = "tfds:brats2021/slices:train"
  return config
