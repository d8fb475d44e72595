r"""The paper's DDPM on BraTS 2021 axial slices: 256x256, five channels (t1, t2, flair, t1ce, seg).

  python launch.py --config=configs/brats21_ddpm.py --workdir=runs/brats21_ddpm
  python launch.py --config=configs/brats21_ddpm.py --workdir=runs/brats21_ddpm \
      --config.workflow=sample

Follows Akbar, Wang & Eklund (MLST 2025) on BraTS 2021: the same guided-diffusion run as for
BraTS 2020 (configs/cxr_ddpm.py's `paper_ddpm`: their flags over guided-diffusion's defaults),
on the slices of the 1195 training subjects.

Prepare the data first (tools/prepare_data.py --dataset=brats2021/slices --manual_dir=BRATS).
"""

from configs import cxr_ddpm
from configs import default


def get_config():
  config = cxr_ddpm.paper_ddpm(default.get_config())
  config.data.source = "tfds:brats2021/slices:train"
  return config
