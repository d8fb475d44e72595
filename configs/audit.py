r"""Memorization audit of a set of synthetic images against their training set.

  python launch.py --config=configs/audit.py --config.audit.synthetic_images=SYNTHETIC \
      --config.audit.training_images=TRAIN [--config.audit.holdout_images=HOLDOUT] \
      --workdir=runs/audit

Each of SYNTHETIC, TRAIN and HOLDOUT is a folder (PNG 8/16-bit, JPEG, TIFF, NIfTI, npy/npz, searched
recursively), a .npy or a .npz file. For every synthetic image: its k most correlated training
images (Pearson over all pixels, Akbar, Wang & Eklund 2025). With a holdout set of real images
never trained on, the memorization threshold is the 95th percentile of each training image's
best correlation with it (Dar et al. 2023); else --config.audit.threshold (0.95). NIfTI volumes are
compared as 3D volumes unless --config.audit.nifti_slice_axis=2 cuts them into axial slices.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.workflow = "audit"
  return config
