r"""The main job, end to end, on data that ships with the install: about 12 minutes on 2 CPU cores.

  python launch.py --config=configs/demo.py --workdir=runs/demo

Trains the DDPM (configs/demo_ddpm.py) and StyleGAN2 (configs/demo_stylegan2.py) on the same 8
of the 48 training slices of the MNI152 template that nilearn ships (tfds:mni152/64:train; the
subset that data.subset_seed=0 chooses), each for the same budget of 12,800 images seen (800
steps of 16), samples 64 images from each, audits every sample against every one of those 8
slices by Pearson correlation at the 32x32 pixels the models trained at, with the threshold
calibrated on the 48 held-out slices (Dar et al.'s 95th percentile), and writes
runs/demo/summary.json and the self-contained runs/demo/report.html, which compares the two
models as the seed paper does and states the measured result in one sentence. Re-running the
command reuses what is finished. configs/demo_sweep.py runs the same comparison at 8, 16 and 48
slices and draws memorization against the training-set size.

Why 8 slices and 12,800 images: the paper finds that diffusion models memorize more than GANs,
especially on small training sets, so the demo trains on the smallest set of the sweep. Both
models get the same budget in images seen, so that neither is favoured by a longer run; the
budget is what 2 CPU cores train in five to six minutes per model (the demo measured 1,000
CPU-seconds in all). Measured at this budget (the sweep, seed 0): the DDPM's samples are
recognisable slices, 1 of 64 past Dar's threshold at 8 slices and none at 16 or 48, while the
StyleGAN2 has not yet learned the slices: its samples are one blurred shape, more alike one
another than the training slices are, which the report says. The demo shows the DDPM starting
to copy, not a GAN trained to variety.

The held-out slices are the odd slices between the even training slices, 2 mm from their
neighbours: the threshold they give is high (about 0.997 at 32x32), so only near pixel copies
count. `--config.data.num_images=N` changes the training set of both models (0: all 48).

On a GPU, scale up through the model sections, e.g. --config.ddpm.num_train_steps=20000
--config.ddpm.data.downsample=1 --config.stylegan2.data.downsample=1
--config.stylegan2.num_train_steps=20000 --config.ddpm.num_samples=1000
--config.stylegan2.num_samples=1000; the demo's models are small because a 2-core CPU must
finish in minutes. `--config.audit.redact_training_images=True` writes a report with no training
pixels.
"""

from ml_collections import config_dict

from configs import default
from configs import demo_ddpm
from configs import demo_stylegan2

NUM_IMAGES = 8  # training slices of 48
IMAGES_SEEN = 12_800  # per model: num_train_steps x batch_size


def get_config():
  config = default.get_config()
  config.workflow = "demo"
  config.audit.training_images = "tfds:mni152/64:train"
  config.audit.holdout_images = "tfds:mni152/64:holdout"
  config.models = ("ddpm", "stylegan2")
  config.ddpm = demo_ddpm.get_config()
  config.stylegan2 = demo_stylegan2.get_config()
  # One training set: --config.data.num_images or --config.data.subset_seed (or either model's)
  # sets it for both models (shared references).
  num_images = config_dict.FieldReference(NUM_IMAGES)
  subset_seed = config_dict.FieldReference(0)
  config.data.num_images = num_images
  config.data.subset_seed = subset_seed
  for name in config.models:
    options = config[name]
    options.data.num_images = num_images
    options.data.subset_seed = subset_seed
    options.num_train_steps = IMAGES_SEEN // options.batch_size
  config.audit.k = 5
  config.audit.num_pairs = 6
  config.report_pairs = 4  # closest pairs per model on report.html
  return config
