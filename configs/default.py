"""Defaults that every experiment config starts from (see configs/*.py)."""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.workflow = "audit"
  config.seed = 0
  # Images to audit: folders (PNG, JPEG, TIFF, NIfTI, npy/npz), .npy or .npz files.
  config.synthetic = config_dict.placeholder(str)
  config.train = config_dict.placeholder(str)
  config.holdout = config_dict.placeholder(str)

  config.audit = ml_collections.ConfigDict()
  config.audit.k = 5  # training matches kept per synthetic image
  config.audit.threshold = 0.95  # used when no holdout set is given
  config.audit.holdout_percentile = 95.0  # Dar et al.'s rule, with a holdout set
  config.audit.block_size = 0  # training images per streamed block; 0: chosen by memjax
  config.audit.num_devices = 0  # devices of the mesh; 0: all of them
  # Products: "float32", "bfloat16x3" (split products on a bfloat16 matrix unit, within 3e-6 of
  # float32), or "auto" (bfloat16x3 on GPUs, TPUs and CPUs with AMX, else float32).
  config.audit.precision = "auto"
  config.audit.nifti_slice_axis = config_dict.placeholder(int)  # None: NIfTI files are volumes
  config.audit.grayscale = False  # convert color images to one channel
  config.audit.num_pairs = 8  # most correlated pairs shown in pairs.png and the report
  config.audit.redact_training_images = False  # a report with no training pixels
  config.audit.progress = True
  return config
