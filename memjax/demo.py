"""The main job: train each generator of the demo, sample and audit it, and compare them on a page.

  python launch.py --config=configs/demo.py --workdir=runs/demo

For each model named in `config.models` (each with its own training config under
`config.<name>`): train in `workdir/<name>` (resuming), sample to `workdir/<name>/samples`,
audit against `config.train` with the threshold calibrated on `config.holdout` in
`workdir/audit/<name>`; then write `workdir/summary.json` and the self-contained
`workdir/report.html`. Every stage reuses what is finished: a trained checkpoint, sample chunks
of the same step and seed, an audit of the same samples with the same settings.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

_TIMING = "demo_timing.json"
_AUDIT_INPUTS = "inputs.json"


def _say(text: str) -> None:
  if jax.process_index() == 0:
    print(text, flush=True)


def _train(options: ml_collections.ConfigDict, workdir: pathlib.Path
           ) -> tuple[int, float]:
  """Trains (or resumes) one model; returns (its step, the wall seconds its training has taken)."""
  from memjax import train as train_lib  # pylint: disable=g-import-not-at-top
  from memjax.train import loop  # pylint: disable=g-import-not-at-top
  timing_path = workdir / _TIMING
  timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"seconds": 0.0}
  start = time.perf_counter()
  result = loop.train(options, workdir, train_lib.make_trainer(options))
  if result.step > int(timing.get("step", 0)):  # Time spent training, summed over resumes.
    timing = {"seconds": float(timing["seconds"]) + time.perf_counter() - start,
              "step": result.step}
    if jax.process_index() == 0:
      timing_path.write_text(json.dumps(timing) + "\n")
  return result.step, float(timing["seconds"])


def _audit(config: ml_collections.ConfigDict, samples: pathlib.Path, out: pathlib.Path,
           inputs: dict[str, Any], holdout_max: np.ndarray | None) -> None:
  """Audits `samples` into `out` unless `out` holds an audit of the same inputs.

  `holdout_max`: the training-vs-holdout maxima of an earlier model's audit (the same two sets),
  so that the calibration search runs once per demo, not once per model.
  """
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax.memorization import audit as audit_lib  # pylint: disable=g-import-not-at-top
  recorded = out / _AUDIT_INPUTS
  if (recorded.exists() and (out / "correlations.npz").exists()
      and json.loads(recorded.read_text()) == inputs):
    _say(f"  reusing the audit in {out}")
    return
  options = config.audit
  audit_lib.run_audit(
      out, synthetic=samples, train=config.train, holdout=config.holdout, k=options.k,
      holdout_percentile=options.holdout_percentile, block_size=options.block_size or None,
      mesh=parallel.data_mesh(options.num_devices or None), precision=options.precision,
      num_pairs=options.num_pairs, redact_training_images=options.redact_training_images,
      progress=options.progress, holdout_max_correlation=holdout_max)
  if jax.process_index() == 0:
    recorded.write_text(json.dumps(inputs, indent=2) + "\n")


def _settings(config: ml_collections.ConfigDict, names: list[str]) -> dict[str, Any]:
  """What the demo ran with: the data, the audit, and each model's training and sampling keys."""
  everything = json.loads(config.to_json_best_effort())
  unused = ("audit", "synthetic", "train", "holdout", "workflow")  # The demo's own, not a model's.
  settings = {key: everything[key] for key in ("train", "holdout", "seed", "audit", "models")}
  for name in names:
    settings[name] = {k: v for k, v in everything[name].items() if k not in unused}
  return settings


def run_demo(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs the demo in `workdir`; returns what it writes to summary.json."""
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  from memjax.memorization import report  # pylint: disable=g-import-not-at-top
  from memjax import train as train_lib  # pylint: disable=g-import-not-at-top
  from memjax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  if not config.get("models"):
    raise ValueError("the demo workflow needs the models to train and their configs: run it "
                     "with --config=configs/demo.py")
  names = list(config.models)
  if not names:
    raise ValueError("--config.models names no model to train")
  for name in names:
    if name not in config:
      raise ValueError(f"--config.models names {name!r}, but the config has no {name!r} section "
                       "(its training config)")
  if not config.get("holdout"):
    raise ValueError("the demo calibrates its threshold on --config.holdout; give one")
  start = time.perf_counter()
  stages = 3 * len(names) + 1
  audits = []
  models = {}
  holdout_max = None
  for n, name in enumerate(names):
    options = config[name]
    model_dir = workdir / name
    _say(f"[{3 * n + 1}/{stages}] training {name} in {model_dir}")
    step, seconds = _train(options, model_dir)
    _say(f"[{3 * n + 2}/{stages}] sampling {options.num_samples} images from {name}")
    samples = loop.sample(options, model_dir, train_lib.make_trainer(options))
    audit_dir = workdir / "audit" / name
    _say(f"[{3 * n + 3}/{stages}] auditing {name}'s samples against {config.train}")
    audit = config.audit
    inputs = {"samples_step": step, "seed": int(options.seed),
              "num_samples": int(options.num_samples), "train": config.train,
              "holdout": config.holdout, "k": int(audit.k),
              "holdout_percentile": float(audit.holdout_percentile),
              "precision": audit.precision, "num_pairs": int(audit.num_pairs),
              "redact_training_images": bool(audit.redact_training_images)}
    _audit(config, samples, audit_dir, inputs, holdout_max)
    summary = json.loads((audit_dir / "summary.json").read_text())
    with np.load(audit_dir / "correlations.npz") as stored:
      arrays = {key: stored[key] for key in stored.files}
    holdout_max = arrays["holdout_max_correlation"]
    max_correlation = arrays["values"][:, 0]
    figures = {
        "fraction_memorized": summary["fraction_memorized"],
        "threshold": summary["threshold"]["value"],
        "median_max_correlation": summary["max_correlation_quantiles"]["median"],
        **{f"fraction_above_{t}": v for t, v in summary["fraction_above"].items()},
        "num_samples": summary["synthetic"]["count"],
        "num_training_images": summary["train"]["count"],
        "training_steps": step,
        "training_seconds": seconds,
        "samples": str(samples),
        "audit": str(audit_dir),
    }
    models[name] = figures
    audits.append((report.ModelAudit(name, sources.open_source(samples), max_correlation,
                                     arrays["indices"][:, 0], figures), summary, arrays))

  _, first_summary, first_arrays = audits[0]
  threshold = float(first_arrays["threshold"])
  summary = {
      "models": models,
      "train": config.train,
      "holdout": config.holdout,
      "threshold": first_summary["threshold"],
      "holdout_max_correlation_quantiles": first_summary["holdout_max_correlation_quantiles"],
      "redacted": bool(config.audit.redact_training_images),
      "wall_seconds": time.perf_counter() - start,
  }
  _say(f"[{stages}/{stages}] writing the comparison to {workdir / 'report.html'}")
  if jax.process_index() == 0:
    report.write_comparison_report(
        workdir / "report.html", models=[a for a, _, _ in audits],
        train=sources.open_source(config.train), threshold=threshold,
        threshold_rule=first_summary["threshold"]["description"],
        holdout_max_correlation=holdout_max,
        settings=_settings(config, names),
        num_pairs=int(config.get("report_pairs", 4)),
        redact=bool(config.audit.redact_training_images))
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, figures in models.items():
      share = figures["fraction_memorized"]
      _say(f"  {name}: {'n/a' if share is None else f'{share:.1%}'} of "
           f"{figures['num_samples']} samples memorized (threshold {figures['threshold']:.4f})")
    _say(f"report: {workdir / 'report.html'}")
  return summary
