r"""StyleGAN2 on BraTS 2020 axial slices: 256x256, five channels (t1, t2, flair, t1ce, seg).

  python launch.py --config=configs/brats20_stylegan2.py --workdir=runs/brats20_stylegan2
  python launch.py --config=configs/brats20_stylegan2.py --workdir=runs/brats20_stylegan2 \
      --config.workflow=sample

What the authors ran (Akbar, Wang & Eklund, MLST 2025): NVlabs' StyleGAN3,
`train.py --cfg=stylegan3-t --gpus=4 --batch=32 --gamma=8 --mirror=1` (gamma 8 as the paper
quotes for BraTS 2020; their README's command has --gamma=5), 25,000 kimg, sampled with
`gen_images.py --trunc=1 --network=network-snapshot-025000.pkl`.

What this runs: StyleGAN2, which memjax implements, not StyleGAN3-t: the authors' command with
`--cfg=stylegan2` (configs/cxr_stylegan2.py's `paper_stylegan2`, which lists every value and what
still differs): batch 32, R1 gamma 8, x-flips, ADA, 25,000 kimg (`train_kimg`), truncation 1; on the
slices of the 313 training subjects (see memjax/data/brats.py). NVlabs' dataset_tool.py takes only
1- or 3-channel images (and ADA's colour transforms only those), so the authors' StyleGAN cannot
have trained on these five channels; memjax's does.

Prepare the data first (tools/prepare_data.py --dataset=brats2020/slices --manual_dir=BRATS).
"""

import ml_collections

from configs import cxr_stylegan2
from configs import default

R1_GAMMA = 8.0  # The paper's gamma for BraTS 2020.


def get_config() -> ml_collections.ConfigDict:
  config = cxr_stylegan2.paper_stylegan2(default.get_config(), r1_gamma=R1_GAMMA)
  config.data.source = "tfds:brats2020/slices:train"
  return config
