"""The main job: train each generator of the demo, sample and audit it, and compare them on a page.

  python launch.py --config=configs/demo.py --workdir=runs/demo

For each model named in `config.models` (each with its own training config under
`config.<name>`): train in `workdir/<name>` (resuming), sample to `workdir/<name>/samples`,
audit against `config.audit.training_images` with the threshold calibrated on
`config.audit.holdout_images` in `workdir/audit/<name>`; then write `workdir/summary.json` and
the self-contained `workdir/report.html`. Every stage reuses what is finished: a trained checkpoint, sample chunks
of the same step and seed, an audit of the same samples with the same settings.
"""

from __future__ import annotations

import dataclasses
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
           inputs: dict[str, Any], holdout_max: np.ndarray | None) -> list[Any]:
  """Audits `samples` into `out` unless `out` holds an audit of the same inputs; returns its
  results (one `AuditResult`, pixel correlation).

  `holdout_max`: the training-vs-holdout maxima of an earlier model's audit (the same two sets),
  so that the calibration search runs once per demo, not once per model.
  """
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax import workflows  # pylint: disable=g-import-not-at-top
  from memjax.memorization import audit as audit_lib  # pylint: disable=g-import-not-at-top
  from memjax.memorization import result as result_lib  # pylint: disable=g-import-not-at-top
  recorded = out / _AUDIT_INPUTS
  if (recorded.exists() and (out / "summary.json").exists()
      and json.loads(recorded.read_text()) == inputs):
    _say(f"  reusing the audit in {out}")
    return result_lib.read_results(out)
  images = workflows.audit_inputs(config)
  options = audit_lib.AuditOptions.from_config(config.audit)
  audit = audit_lib.run_audit(
      out, synthetic=samples, train=images["training_images"],
      holdout=images["holdout_images"], options=dataclasses.replace(options, detector="correlation"),
      mesh=parallel.data_mesh(config.audit.num_devices or None),
      holdout_max_correlation=holdout_max,
      extra_outputs={_AUDIT_INPUTS: json.dumps(inputs, indent=2) + "\n"})
  return audit.results


def _settings(config: ml_collections.ConfigDict, names: list[str]) -> dict[str, Any]:
  """What the demo ran with: the data, the audit, and each model's training and sampling keys."""
  everything = json.loads(config.to_json_best_effort())
  unused = ("audit", "synthetic", "train", "holdout", "workflow")  # The demo's own, not a model's.
  settings = {key: everything[key] for key in ("seed", "audit", "models")}
  for name in names:
    settings[name] = {k: v for k, v in everything[name].items() if k not in unused}
  return settings


def run_demo(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs the demo in `workdir`; returns what it writes to summary.json."""
  from memjax import workflows  # pylint: disable=g-import-not-at-top
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  from memjax.memorization import audit as audit_lib  # pylint: disable=g-import-not-at-top
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
  images = workflows.audit_inputs(config)
  if not images["holdout_images"]:
    raise ValueError("the demo calibrates its threshold on --config.audit.holdout_images; give "
                     "one")
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
    _say(f"[{3 * n + 3}/{stages}] auditing {name}'s samples against "
         f"{images['training_images']}")
    audit = config.audit
    inputs = {"samples_step": step, "seed": int(options.seed),
              "num_samples": int(options.num_samples), "train": images["training_images"],
              "holdout": images["holdout_images"], "k": int(audit.k),
              "holdout_percentile": float(audit.holdout_percentile),
              "precision": audit.precision, "num_pairs": int(audit.num_pairs),
              "redact_training_images": bool(audit.redact_training_images)}
    result = _audit(config, samples, audit_dir, inputs, holdout_max)[0]
    holdout_max = result.holdout_max_correlation
    synthetic = sources.open_source(samples)
    train = sources.open_source(images["training_images"])  # prepared by the first training
    detector = audit_lib.detector_summary(result, synthetic, train)
    figures = {
        "fraction_memorized": detector["fraction_memorized"],
        "threshold": result.threshold,
        "median_max_correlation": detector["max_correlation_quantiles"]["median"],
        **{f"fraction_above_{t}": v for t, v in detector["fraction_above"].items()},
        "num_samples": len(synthetic),
        "num_training_images": len(train),
        "training_steps": step,
        "training_seconds": seconds,
        "samples": str(samples),
        "audit": str(audit_dir),
    }
    models[name] = figures
    audits.append((report.ModelAudit(name, synthetic, result, figures), detector))

  first = audits[0][0].result
  summary = audit_lib.json_safe({
      "models": models,
      "training_images": images["training_images"],
      "holdout_images": images["holdout_images"],
      "threshold": audits[0][1]["threshold"],
      "holdout_max_correlation_quantiles": audits[0][1]["holdout_max_correlation_quantiles"],
      "redacted": bool(config.audit.redact_training_images),
      "wall_seconds": time.perf_counter() - start,
  })
  _say(f"[{stages}/{stages}] writing the comparison to {workdir / 'report.html'}")
  if jax.process_index() == 0:
    report.write_comparison_report(
        workdir / "report.html", models=[a for a, _ in audits], train=train,
        threshold=first.threshold, threshold_rule=first.threshold_rule,
        holdout_max_correlation=first.holdout_max_correlation,
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
