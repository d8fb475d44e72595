"""What `launch.py` runs: one function per `config.workflow`, each given a config and a work dir."""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
from collections.abc import Callable

import jax
import ml_collections

from memjax import outputs
from memjax import parallel

_PENDING: dict[str, str] = {}  # Workflows announced but not built: name -> what to do instead.


# The audit's images: (key in config.audit, deprecated top-level key, what it holds).
AUDIT_INPUTS = (("synthetic_images", "synthetic", "the synthetic images"),
                ("training_images", "train", "the training images"),
                ("holdout_images", "holdout", "held-out real images"))


def audit_inputs(config: ml_collections.ConfigDict) -> dict[str, str | None]:
  """config.audit.{synthetic,training,holdout}_images, read from their old top-level names
  (config.synthetic, config.train, config.holdout) with a one-line deprecation warning."""
  found = {}
  for key, old, _ in AUDIT_INPUTS:
    value = config.audit.get(key) or None
    if config.get(old):
      logging.warning("--config.%s is deprecated: use --config.audit.%s", old, key)
      if value and value != config[old]:
        raise ValueError(f"--config.{old}={config[old]} and --config.audit.{key}={value} "
                         "disagree; give only --config.audit." + key)
      value = config[old]
    found[key] = value
  return found


def _check_encoder_dir(encoder: str) -> None:
  """A work dir given as the embedding detector's encoder must hold a contrastive encoder."""
  path = pathlib.Path(encoder)
  config_file = path / "config.json"
  if not config_file.is_file():
    return  # load_embedder says what is missing
  try:
    name = json.loads(config_file.read_text()).get("model", {}).get("name")
  except (ValueError, AttributeError):
    return
  if name != "contrastive":
    raise ValueError(f"--config.audit.encoder={encoder} is the work dir of a {name!r} model, not "
                     "of a contrastive encoder: train one with python launch.py "
                     "--config=configs/demo_contrastive.py (or cxr_/brats20_contrastive.py) and "
                     "give its work dir")


def audit(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """Audits config.audit.synthetic_images against config.audit.training_images (calibrated on
  config.audit.holdout_images when given); writes config.json with the results."""
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  from memjax.memorization import audit as audit_lib  # pylint: disable=g-import-not-at-top
  inputs = audit_inputs(config)
  for key, _, what in AUDIT_INPUTS[:2]:
    if not inputs[key]:
      raise ValueError(f"--config.audit.{key} is required: a folder, .npy or .npz file of {what}")
  options = audit_lib.AuditOptions.from_config(config.audit)
  options.check(has_holdout=bool(inputs["holdout_images"]))  # before any file is opened
  settings = config.audit
  open_options = dict(nifti_slice_axis=settings.get("nifti_slice_axis"),
                      grayscale=bool(settings.get("grayscale")))
  synthetic = sources.open_source(inputs["synthetic_images"], **open_options)
  train = sources.open_source(inputs["training_images"], **open_options)
  holdout = (sources.open_source(inputs["holdout_images"], **open_options)
             if inputs["holdout_images"] else None)
  mesh = parallel.data_mesh(settings.num_devices or None)
  embed_fn = None
  if "embedding" in options.detector_names and settings.get("encoder"):
    _check_encoder_dir(settings.encoder)
    from memjax.train import contrastive  # pylint: disable=g-import-not-at-top
    embed_fn = contrastive.load_embedder(settings.encoder, mesh=mesh,
                                         step=settings.get("encoder_step"))
  audit_lib.check_detector(options.detector_names, embed_fn)
  return audit_lib.run_audit(
      workdir, synthetic=synthetic, train=train, holdout=holdout, options=options, mesh=mesh,
      embed_fn=embed_fn, extra_outputs={"config.json": config.to_json_best_effort(indent=2)})


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
  from memjax.train import sampling  # pylint: disable=g-import-not-at-top
  folder = sampling.sample(config, workdir, train_lib.make_trainer(config))
  if jax.process_index() == 0:
    print(f"{config.num_samples} samples written to {folder} (grid in {workdir / sampling.GRIDS}); "
          f"audit them: python launch.py --config=configs/audit.py "
          f"--config.audit.synthetic_images={folder} "
          f"--config.audit.training_images={config.data.source} --workdir={workdir / 'audit'}")
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
  """Runs `config.workflow` in `workdir`, which it holds locked for the run (`WorkdirLock`).

  Training, sampling and the demo save the config there first (training refuses a config that
  cannot resume the checkpoints there, before writing anything); an audit writes it with its
  results, so a failed audit leaves the previous ones and their config as they were.
  """
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
  # One run per work dir; on many hosts, the first process holds it for all of them.
  first = jax.process_index() == 0
  with outputs.WorkdirLock(workdir) if first else contextlib.nullcontext():
    if workflow != "audit":  # every process: the check opens orbax managers, a barrier over all
      from memjax.train import checkpoints  # pylint: disable=g-import-not-at-top
      checkpoints.save_config(config, workdir)
    return WORKFLOWS[workflow](config, workdir)
