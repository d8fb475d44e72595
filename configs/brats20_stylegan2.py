r"""StyleGAN2 on BraTS 2020 axial slices: 256x256, five channels (t1, t2, flair, t1ce, seg).

  python launch.py --config=configs/brats20_stylegan2.py --workdir=runs/brats20_stylegan2
  python launch.py --config=configs/brats20_stylegan2.py --workdir=runs/brats20_stylegan2 \
      --config.workflow=sample

Follows Akbar, Wang & Eklund (MLST 2025) on BraTS 2020: batch 32, R1 gamma 8, mirror
augmentation, 25,000 thousand images, on the slices of the 313 training subjects (see
memjax/data/brats.py); they trained StyleGAN3-t, this is StyleGAN2 at stylegan2-ada-pytorch's
defaults elsewhere (configs/cxr_stylegan2.py's `paper_stylegan2`).

Prepare the data first (tools/prepare_data.py --dataset=brats2020/slices --manual_dir=BRATS).
"""

from configs import cxr_stylegan2
from configs import default


def get_config():
  config = cxr_stylegan2.paper_stylegan2(default.get_config(), r1_gamma=8.0)
  config.data.source = "tfds:brats2020/slices:train"
  return config
