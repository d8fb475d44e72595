r"""memjax's command line: one config, one work directory.

  python launch.py --config=configs/audit.py --config.audit.synthetic_images=SYN \
      --config.audit.training_images=TRAIN [--config.audit.holdout_images=HOLDOUT] \
      --workdir=runs/audit

Any config key can be overridden (`--config.audit.k=5`); an unknown key is one line naming the
nearest valid one. `config.workflow` picks what runs (`audit`, `train`, `sample`, `demo`); the
work lives in `memjax/workflows.py`. User errors (a
missing file, a bad image, a wrong setting) print one line and exit with status 2; set
MEMJAX_TRACEBACK=1 to see the traceback.

On many machines every process runs the same command (README, "Running on many machines"):
it joins the run that Slurm (srun), Open MPI or a Cloud TPU VM describes, or that the flags or
the environment name.

  python launch.py --config=... --workdir=SHARED --coordinator_address=HOST0:1234 \
      --num_processes=2 --process_id=0        # and --process_id=1 on the other machine
  JAX_COORDINATOR_ADDRESS=HOST0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python launch.py ...
"""

import logging as std_logging

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py); override keys with --config.KEY=VALUE.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and audits.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Many machines: host:port of process 0, which all processes reach (default "
    "$JAX_COORDINATOR_ADDRESS, or what Slurm, Open MPI or a Cloud TPU VM says).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Many machines: the number of processes (default $JAX_NUM_PROCESSES, "
    "or the launcher's).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Many machines: this process, 0 to num_processes - 1 (default "
    "$JAX_PROCESS_ID, or the launcher's).", lower_bound=0)
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", None,
    "Many machines: when another process dies, this one ends with an error within about this "
    "many seconds (default JAX's, 100).", lower_bound=1)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  # JAX reports at INFO that it looked for TPUs and GPUs that a CPU machine has not.
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from memjax import cli  # pylint: disable=g-import-not-at-top
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax import workflows  # pylint: disable=g-import-not-at-top
  cli.run_reporting_user_errors(lambda: parallel.initialize_distributed(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
      heartbeat_timeout_seconds=_HEARTBEAT.value))
  cli.run_reporting_user_errors(lambda: workflows.run(_CONFIG.value, _WORKDIR.value))
  # The other processes wait for process 0's last writes (an audit's report) before they exit.
  parallel.wait_for_every_process("launch.py: workflow done")


if __name__ == "__main__":
  from memjax import cli as _cli  # pylint: disable=g-import-not-at-top
  # Flag errors (an unknown --config key, a value of the wrong type) in one line, exit status 2.
  app.run(main, flags_parser=_cli.parse_flags)
