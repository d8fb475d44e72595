r"""The paper's DDPM on BraTS 2020 axial slices: 256x256, five channels (t1, t2, flair, t1ce, seg).

  python launch.py --config=configs/brats20_ddpm.py --workdir=runs/brats20_ddpm
  python launch.py --config=configs/brats20_ddpm.py --workdir=runs/brats20_ddpm \
      --config.workflow=sample

Follows Akbar, Wang & Eklund (MLST 2025) on BraTS 2020: guided-diffusion with their flags
(image_size 256, num_channels 64, num_res_blocks 3, 4000 linear diffusion steps, lr 1e-4,
batch 32) over its defaults (attention at 16 and 8 with 4 heads per layer, scale-shift norm,
EMA 0.9999, sampling with the FIXED_LARGE variance), on the slices of the 313 training subjects
preprocessed as their MATLAB does (see memjax/data/brats.py); the settings are in
configs/cxr_ddpm.py's `paper_ddpm`. The U-Net has 41,125,637 parameters for five channels.

Prepare the data first (tools/prepare_data.py --dataset=brats2020/slices --manual_dir=BRATS).
"""

from configs import cxr_ddpm
from configs import default


def get_config():
  config = cxr_ddpm.paper_ddpm(default.get_config())
  config.data.source = "tfds:brats2020/slices:train"
  return config
