r"""The demo at 8, 16 and 48 training slices: memorization against the training-set size.

  python launch.py --config=configs/demo_sweep.py --workdir=runs/demo_sweep

The paper's "especially for small datasets" as a curve. Runs the demo (configs/demo.py: the
DDPM and StyleGAN2, each for the same 12,800 images seen, 64 samples each, the audit at the
models' 32x32) once per size, on the subsets of tfds:mni152/64:train that data.subset_seed=0
chooses: the 8 slices lie inside the 16, the 16 inside all 48, so a larger set only adds
slices. Each size is a complete demo in runs/demo_sweep/n<size>/ (its own summary.json and
comparison page); runs/demo_sweep/report.html draws each model's fraction memorized at Dar's
threshold, fraction at r >= 0.95 and median best correlation against the size, and
runs/demo_sweep/summary.json holds those figures per model and size. Three demos: about three
times the demo's time, about 35 minutes on 2 idle CPU cores (measured: 53 minutes with the cores
shared with other work, load average 3-6). Change the sizes with --config.sizes='(8, 24)'; any
key of the demo applies to every size.

Measured (seed 0, no other seed tried): the DDPM's share of samples at r >= 0.95 falls from 17%
at 8 slices to 16% at 16 and 13% at 48, its median best correlation from 0.85 to 0.84 and 0.78,
and 1 of its 64 samples passes Dar's threshold at 8 slices, none at 16 or 48; the StyleGAN2's
samples reach none of these at any size, but they are one blurred shape (more alike one another
than the training slices are): at 12,800 images it has not learned the slices.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.workflow = "sweep"
  config.sizes = (8, 16, 48)
  return config
