r"""The main job, end to end, on data that ships with the install (built in issue 7).

  python launch.py --config=configs/demo.py --workdir=runs/demo

Will train the DDPM and StyleGAN2 on the embedded MNI152 slices, sample from both, audit them
against their training slices with a calibrated threshold, and write a report.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.workflow = "demo"
  return config
