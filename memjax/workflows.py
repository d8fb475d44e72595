"""What the memjax command runs: one function per `config.workflow`, each given a config and a work
dir, each ending with a short plain summary on stdout: what it found, where the files are, the
next command."""

from __future__ import annotations

import contextlib
import json
import pathlib
import shlex
import sys
from collections.abc import Callable, Sequence

import jax
import ml_collections

from memjax import outputs
from memjax import parallel
from memjax.cli import say

NOTHING_COMPARED_STATUS = 3  # the exit status of an audit in which no correlation was defined

_PENDING: dict[str, str] = {}  # Workflows announced but not built: name -> what to do instead.
# How the next command starts, and the config arguments a training run was started with (as the
# user typed them; `run` sets them from the command line).
_COMMAND = {"program": "memjax", "config": ["--config=CONFIG"]}


def _quoted(path: object) -> str:
  return shlex.quote(str(path))


def _next_command(*arguments: str) -> str:
  return " ".join([_COMMAND["program"], *arguments])


def remember_command(command: Sequence[str]) -> None:
  """Keeps the program and the --config arguments of `command` (sys.argv) for the next commands
  that the summaries print."""
  program = "python launch.py" if command[0].endswith("launch.py") else "memjax"
  _COMMAND.update(program=program, config=[
      _quoted(a) for a in command[1:]
      if a.startswith("--config") and not a.startswith("--config.workflow=")])


def _same_run(workdir: pathlib.Path, workflow: str) -> str:
  """The command that started this run, as another workflow in the same work dir."""
  return _next_command(*_COMMAND["config"], f"--config.workflow={workflow}",
                       f"--workdir={_quoted(workdir)}")


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
  inputs = audit_lib.audit_inputs(config)
  for key, _, what in audit_lib.AUDIT_INPUTS[:2]:
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
  from memjax.memorization import plugins  # pylint: disable=g-import-not-at-top
  needs_encoder = any(plugins.get(name).needs_encoder for name in options.detector_names)
  if settings.get("encoder") and not needs_encoder:
    raise ValueError(f"--config.audit.encoder={settings.encoder} is given but no detector uses it "
                     f"(--config.audit.detectors={','.join(options.detector_names)}): add "
                     "embedding to the detectors, or leave the encoder out")
  if needs_encoder and settings.get("encoder"):
    _check_encoder_dir(settings.encoder)
    from memjax.train import contrastive  # pylint: disable=g-import-not-at-top
    embed_fn = contrastive.load_embedder(settings.encoder, mesh=mesh,
                                         step=settings.get("encoder_step"))
  audit_lib.check_detector(options.detector_names, embed_fn)
  summary = audit_lib.run_audit(
      workdir, synthetic=synthetic, train=train, holdout=holdout, options=options, mesh=mesh,
      embed_fn=embed_fn, extra_outputs={"config.json": config.to_json_best_effort(indent=2)})
  say_audit(summary, workdir)
  from memjax.memorization import decision  # pylint: disable=g-import-not-at-top
  if summary["decision"]["verdict"] == decision.NO_CORRELATION:
    # Not a clean audit: the results are written, but they answer nothing.
    print(f"error: {summary['decision']['reasons'][0]}; the results in {workdir} say so",
          file=sys.stderr)
    sys.exit(NOTHING_COMPARED_STATUS)
  return summary


def say_audit(summary: dict, workdir: pathlib.Path) -> None:
  """The audit's plain summary on stdout: per detector, what it flagged and at which threshold;
  the files; the next step."""
  from memjax.memorization import plugins  # pylint: disable=g-import-not-at-top
  decision = summary.get("decision")
  if decision:  # the verdict first, with its first reason (the page and summary.json give all)
    say(f"decision: {decision['verdict']}"
        + (f": {decision['reasons'][0]}" if decision["reasons"] else ""))
  for warning in summary.get("warnings") or []:
    say(f"check the calibration: {warning}")
  synthetic = summary["synthetic"]["count"]
  holdout = (summary.get("holdout") or {}).get("count")
  for name, found in summary["detectors"].items():
    threshold = found["threshold"]["value"]
    how = (f"calibrated on {holdout} held-out images" if found["threshold"]["rule"] != "fixed"
           and holdout else "fixed; give --config.audit.holdout_images to calibrate it")
    say(f"{found['num_memorized']} of {synthetic} synthetic images memorized by "
        f"{plugins.get(name).words['name']} (threshold {threshold:.4f}, {how})")
    quantiles = found.get("max_correlation_quantiles") or {}
    above = ", ".join(f"{share:.1%} at or above {t}" for t, share in found["fraction_above"].items()
                      if share is not None)
    if quantiles:
      say(f"  best correlations: median {quantiles['median']:.4f}, max {quantiles['max']:.4f}; "
          + above)
  say(f"results in {workdir}: report.html, matches.csv, summary.json")
  say(f"next: open {workdir / 'report.html'}")


def train(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """Trains the model family of config.model.name, resuming from workdir's last checkpoint."""
  from memjax import train as train_lib  # pylint: disable=g-import-not-at-top
  from memjax.train import loop  # pylint: disable=g-import-not-at-top
  result = loop.train(config, workdir, train_lib.make_trainer(config))
  loss = result.metrics.get("loss")
  say(f"trained to step {result.step} in {workdir} ({config.model.name}"
      + (f", loss {loss:.4g}" if loss is not None else "")
      + f"): checkpoints in {workdir / 'checkpoints'}")
  if config.model.name == "contrastive":  # an encoder is not sampled: it audits
    say("next, audit with it: " + _next_command(
        "--config=audit", "--config.audit.synthetic_images=SYNTHETIC",
        f"--config.audit.training_images={_quoted(config.data.source)}",
        "--config.audit.detector=both", f"--config.audit.encoder={_quoted(workdir)}",
        "--workdir=OUT"))
  else:
    say("next, sample it: " + _same_run(workdir, "sample"))
  return result


def sample(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """Writes config.num_samples images of workdir's last checkpoint to workdir/samples."""
  from memjax import train as train_lib  # pylint: disable=g-import-not-at-top
  from memjax.train import sampling  # pylint: disable=g-import-not-at-top
  folder = sampling.sample(config, workdir, train_lib.make_trainer(config))
  say(f"{config.num_samples} samples written to {folder} (grid in {workdir / sampling.GRIDS})")
  say("next, audit them: " + _next_command(
      "--config=audit", f"--config.audit.synthetic_images={_quoted(folder)}",
      f"--config.audit.training_images={_quoted(config.data.source)}",
      *([f"--config.audit.nifti_slice_axis={config.data.nifti_slice_axis}"]
        if config.data.get("nifti_slice_axis") is not None else []),
      f"--workdir={_quoted(workdir / 'audit')}"))
  return folder


def demo(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """Trains, samples and audits every model of config.models; writes report.html. A config with
  `sizes` (configs/demo_sweep.py) runs the sweep."""
  if config.get("sizes"):
    return sweep(config, workdir)
  from memjax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  return demo_lib.run_demo(config, workdir)


def sweep(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """The demo at each training-set size of config.sizes; writes summary.json and report.html."""
  from memjax import demo_sweep  # pylint: disable=g-import-not-at-top
  if not config.get("sizes"):
    raise ValueError("the sweep workflow needs --config.sizes (training-set sizes); start from "
                     "--config=demo_sweep")
  return demo_sweep.run_sweep(config, workdir)


def prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path | None) -> str:
  """Prepares config.prepare.dataset in config.data.data_dir (tfds: sources read it)."""
  del workdir  # the data set goes to its data_dir
  from memjax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  settings = config.get("prepare")
  if settings is None:
    raise ValueError("the prepare workflow needs the prepare config: --config=prepare")
  summary = prepare_lib.prepare(settings.dataset, settings.manual_dir or None,
                                config.data.get("data_dir"), bool(settings.strict),
                                settings.get("num_subjects"))
  say(summary)
  name, _, variant = settings.dataset.partition("/")
  source = f"tfds:{name}/{variant}:train" if variant else f"tfds:{name}:train"
  data_dir = config.data.get("data_dir")
  say("next, train on it: " + _next_command(
      "--config=CONFIG", f"--config.data.source={source}",
      *([f"--config.data.data_dir={_quoted(data_dir)}"] if data_dir else []), "--workdir=RUN"))
  return summary


WORKFLOWS: dict[str, Callable[[ml_collections.ConfigDict, pathlib.Path], object]] = {
    "audit": audit,
    "train": train,
    "sample": sample,
    "demo": demo,
    "sweep": sweep,
    "prepare": prepare,
}


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None,
        command: Sequence[str] | None = None):
  """Runs `config.workflow` in `workdir`, which it holds locked for the run (`WorkdirLock`).

  `command` is the command line that started the run (its program and --config arguments start
  the next commands that the summary prints). config.json has one writer per workflow: training
  writes it once it knows the run can resume the checkpoints there (`loop.train`), an audit with
  its results (a failed audit leaves the previous ones and their config as they were), the demo,
  the sweep and the preparation before they start; sampling only reads the training run's.
  """
  workflow = config.get("workflow")
  if workflow in _PENDING:
    raise NotImplementedError(f"workflow {workflow!r}: {_PENDING[workflow]}")
  if workflow not in WORKFLOWS:
    known = ", ".join(sorted(set(WORKFLOWS) | set(_PENDING)))
    raise ValueError(f"unknown workflow {workflow!r} in the config; expected one of: {known}")
  if command:
    remember_command(command)
  if workflow == "prepare" and not workdir:
    return prepare(config, None)
  if not workdir:
    raise ValueError(f"--workdir is required for the {workflow} workflow")
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(f"--workdir={workdir} is a file; give a directory (it is created "
                             "if missing)")
  workdir.mkdir(parents=True, exist_ok=True)
  # One run per work dir; on many hosts, the first process holds it for all of them.
  first = jax.process_index() == 0
  with outputs.WorkdirLock(workdir) if first else contextlib.nullcontext():
    if workflow in ("demo", "sweep", "prepare") and first:
      from memjax.train import run_config  # pylint: disable=g-import-not-at-top
      run_config.write_config(config, workdir)
    return WORKFLOWS[workflow](config, workdir)
