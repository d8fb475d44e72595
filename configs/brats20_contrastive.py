r"""Dar et al.'s 2D contrastive encoder on BraTS 2020 axial slices: 256x256, five channels.

  python launch.py --config=configs/brats20_contrastive.py --workdir=runs/brats20_contrastive

The 2D setting of Dar et al. (2023; configs/cxr_contrastive.py's `dar_contrastive`): a
ResNet-50 (GroupNorm, trained from scratch) whose last layer maps 2048 features to a 128-d
embedding, NT-Xent at temperature 0.07 against an augmented view (rotation up to 5 degrees with
probability 0.5, left-right flip with probability 0.5, contrast and brightness +-0.05), batch 64,
Adam at 1e-4 with a cosine decay to half of it. Here the stem takes the five channels of the
slices of Akbar, Wang & Eklund (t1, t2, flair, t1ce, seg). Dar et al. train for 200 epochs; the
slices of the 313 training subjects number about 30,000, so 200 epochs are about 94,000 steps:
set num_train_steps to what your budget allows. Embed the audit's images with the encoder
trained on the same data as the generative model.
Prepare the data first (tools/prepare_data.py --dataset=brats2020/slices --manual_dir=BRATS).
"""

from configs import cxr_contrastive
from configs import default


def get_config():
  config = cxr_contrastive.dar_contrastive(default.get_config())
  config.data.source = "tfds:brats2020/slices:train"
  config.num_train_steps = 94_000  # 200 epochs of ~30,000 slices at batch 64
  config.checkpoint_every_steps = 5000
  return config
