r"""memjax's command in a checkout: `python launch.py` is `memjax` (memjax/launcher.py).

  python launch.py --config=configs/audit.py --config.audit.synthetic_images=SYN \
      --config.audit.training_images=TRAIN [--config.audit.holdout_images=HOLDOUT] \
      --workdir=runs/audit

`python launch.py --config=NAME --help` lists a config's keys with their meanings.
"""

from memjax import launcher

if __name__ == "__main__":
  launcher.main()
