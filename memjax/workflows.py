"""What `launch.py` runs: one function per `config.workflow`, each given a config and a work dir."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import jax
import ml_collections

from memjax import parallel

_PENDING: dict[str, str] = {}  # Workflows announced but not built: name -> what to do instead.


def audit(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """Audits config.synthetic against config.train (and calibrates on config.holdout)."""
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  from memjax.memorization import audit as audit_lib  # pylint: disable=g-import-not-at-top
  for key, what in (("synthetic", "the synthetic images"), ("train", "the training images")):
    if not config.get(key):
      raise ValueError(f"--config.{key} is required: a folder, .npy or .npz file of {what}")
  options = config.audit
  slice_axis = options.get("nifti_slice_axis")
  open_options = dict(nifti_slice_axis=slice_axis, grayscale=bool(options.get("grayscale")))
  synthetic = sources.open_source(config.synthetic, **open_options)
  train = sources.open_source(config.train, **open_options)
  holdout = (sources.open_source(config.holdout, **open_options)
             if config.get("holdout") else None)
  mesh = parallel.data_mesh(options.num_devices or None)
  detector = options.get("detector", "correlation")
  embed_fn = None
  if detector != "correlation" and options.get("encoder"):
    from memjax.train import contrastive  # pylint: disable=g-import-not-at-top
    embed_fn = contrastive.load_embedder(options.encoder, mesh=mesh,
                                         step=options.get("encoder_step"))
  audit_lib.check_detector(detector, embed_fn)
  return audit_lib.run_audit(
      workdir,
      synthetic=synthetic, train=train, holdout=holdout, k=options.k,
      threshold=options.threshold, holdout_percentile=options.holdout_percentile,
      block_size=options.block_size or None, mesh=mesh, precision=options.precision,
      num_pairs=options.num_pairs,
      redact_training_images=options.redact_training_images, progress=options.progress,
      detector=detector, embed_fn=embed_fn)


def train(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """Trains the model family of config.model.name, resuming from workdir's last checkpoint."""
  from memjax import train as train_lib  # pylint: disable=g-import-not-at-top
  from memjax.train import loop  # pylint: disable=g-import-not-at-top
  result = loop.train(config, workdir, train_lib.make_trainer(config))
  if jax.process_index() == 0:
    loss = result.metrics.get("loss")
    print(f"trained to step {result.step} in {workdir}"
          + (f" (loss {loss:.4g})" if loss is not None else "")
          + f"; sample with --config.workflow=sample")
  return result


def sample(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """Writes config.num_samples images of workdir's last checkpoint to workdir/samples."""
  from memjax import train as train_lib  # pylint: disable=g-import-not-at-top
  from memjax.train import loop  # pylint: disable=g-import-not-at-top
  folder = loop.sample(config, workdir, train_lib.make_trainer(config))
  if jax.process_index() == 0:
    print(f"{config.num_samples} samples written to {folder} (grid in {workdir / loop.GRIDS}); "
          f"audit them: python launch.py --config=configs/audit.py --config.synthetic={folder} "
          f"--config.train={config.data.source} --workdir={workdir / 'audit'}")
  return folder


def demo(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """Trains, samples and audits every model of config.models; writes report.html."""
  from memjax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  return demo_lib.run_demo(config, workdir)


WORKFLOWS: dict[str, Callable[[ml_collections.ConfigDict, pathlib.Path], object]] = {
    "audit": audit,
    "train": train,
    "sample": sample,
    "demo": demo,
}


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
  """Runs `config.workflow` in `workdir`, after saving the config there."""
  workflow = config.get("workflow")
  if workflow in _PENDING:
    raise NotImplementedError(f"workflow {workflow!r}: {_PENDING[workflow]}")
  if workflow not in WORKFLOWS:
    known = ", ".join(sorted(set(WORKFLOWS) | set(_PENDING)))
    raise ValueError(f"unknown workflow {workflow!r} in the config; expected one of: {known}")
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(f"--workdir={workdir} is a file; give a directory (it is created "
                             "if missing)")
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    from memjax.train import loop  # pylint: disable=g-import-not-at-top
    loop.save_config(config, workdir)
  return WORKFLOWS[workflow](config, workdir)
