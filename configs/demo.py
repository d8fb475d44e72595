r"""The main job, end to end, on data that ships with the install: about 12 minutes on 2 CPU cores.

  python launch.py --config=configs/demo.py --workdir=runs/demo

Trains the DDPM (configs/demo_ddpm.py) and StyleGAN2 (configs/demo_stylegan2.py) on the 48
training slices of the MNI152 template that nilearn ships (tfds:mni152/64:train), samples 64
images from each, audits every sample against every training slice by Pearson correlation with
the threshold calibrated on the 48 held-out slices (Dar et al.'s 95th percentile), and writes
runs/demo/summary.json and the self-contained runs/demo/report.html, which compares the two
models as the seed paper does. Re-running the command reuses what is finished.

The held-out slices are the odd slices between the even training slices, 2 mm from their
neighbours: the threshold they give is high (about 0.995), so only near pixel copies count.

On a GPU, scale up through the model sections, e.g. --config.ddpm.num_train_steps=20000
--config.ddpm.data.downsample=1 --config.stylegan2.num_train_steps=20000
--config.ddpm.num_samples=1000 --config.stylegan2.num_samples=1000; the demo's models are
small because a 2-core CPU must finish in minutes, and a longer-trained DDPM copies more.
`--config.audit.redact_training_images=True` writes a report with no training pixels.
"""

from configs import default
from configs import demo_ddpm
from configs import demo_stylegan2


def get_config():
  config = default.get_config()
  config.workflow = "demo"
  config.audit.training_images = "tfds:mni152/64:train"
  config.audit.holdout_images = "tfds:mni152/64:holdout"
  config.models = ("ddpm", "stylegan2")
  config.ddpm = demo_ddpm.get_config()
  config.stylegan2 = demo_stylegan2.get_config()
  config.audit.k = 5
  config.audit.num_pairs = 6
  config.report_pairs = 4  # closest pairs per model on report.html
  return config
