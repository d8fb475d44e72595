"""The main job: train each generator of the demo, sample and audit it, and compare them on a page.

  python launch.py --config=configs/demo.py --workdir=runs/demo
  python launch.py --config=configs/demo_sweep.py --workdir=runs/demo_sweep  # the sweep workflow

For each model named in `config.models` (each with its own training config under
`config.<name>`): train in `workdir/<name>` (resuming), sample to `workdir/<name>/samples`,
audit against the images the models trained on, with the threshold calibrated on
`config.audit.holdout_images`, in `workdir/audit/<name>`; then write `workdir/summary.json` and
the self-contained `workdir/report.html`. Every stage reuses what is finished: a trained
checkpoint, sample chunks of the same step and seed, an audit of the same samples with the same
settings. The sweep workflow (memjax/demo_sweep.py) runs it once per training-set size.

The models share one training set (`TrainingSet`): the same source, the same seeded subset
(data.num_images, data.subset_seed) and the same pixel grid (data.downsample). The audit compares
samples with exactly that subset, checked against what training reads, at the resolution the
models trained at: a model trained on means of 2x2 pixel blocks can at best reproduce those
means, and such a perfect copy, upsampled, correlates only 0.95-0.97 with the full-resolution
MNI152 slice, below Dar's threshold (0.9945 there); compared at the models' resolution, a copy
scores 1.0 and the threshold is calibrated at that resolution too.
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

from memjax.cli import say

_TIMING = "demo_timing.json"
_AUDIT_INPUTS = "inputs.json"
# What every model must share: the demo compares generators of one training set.
_SHARED_DATA_KEYS = ("source", "num_images", "subset_seed", "downsample", "volumes")
# Images whose pairwise correlations measure a set's variety (the first ones of the set).
VARIETY_IMAGES = 128


@dataclasses.dataclass(frozen=True)
class TrainingSet:
  """The images every model of the demo trains on, and the pixel grid they train at."""
  source: str
  num_images: int  # 0: all of the source.
  subset_seed: int
  downsample: int
  volumes: bool

  def open(self) -> Any:
    """The training images as stored (the seeded subset when num_images is set)."""
    from memjax.data import sources  # pylint: disable=g-import-not-at-top
    return sources.open_source(self.source, num_images=self.num_images, seed=self.subset_seed)

  def at_training_resolution(self, images: Any) -> Any:
    """`images` (an ImageSource) as the models saw theirs: means of data.downsample^d blocks."""
    from memjax.data import sources  # pylint: disable=g-import-not-at-top
    if self.downsample == 1:
      return images
    return sources.BlockMeanSource(images, self.downsample, 3 if self.volumes else 2)

  def describe(self, train: Any) -> dict[str, Any]:
    """What summary.json and the page say of `train` (this set as audited): the subset by its
    ids, and the pixel grid of the audit."""
    from memjax.data import sources  # pylint: disable=g-import-not-at-top
    return {"source": self.source, "num_images": len(train),
            "of": len(sources.open_source(self.source)), "subset_seed": self.subset_seed,
            "ids": train.ids(), "audit_downsample": self.downsample,
            "audited_pixels": "x".join(map(str, train.shape[:3 if self.volumes else 2]))}


def training_set(config: ml_collections.ConfigDict, names: list[str]) -> TrainingSet:
  """The one training set of the models `names`; ValueError when they or the audit disagree."""
  from memjax.memorization import audit as audit_lib  # pylint: disable=g-import-not-at-top
  found = {}
  for key in _SHARED_DATA_KEYS:
    values = {name: config[name].data.get(key) for name in names}
    if key == "num_images":
      values = {name: int(value or 0) for name, value in values.items()}
    if len(set(values.values())) > 1:
      raise ValueError(f"the demo compares models trained on the same images, but their "
                       f"data.{key} differ: " + ", ".join(f"--config.{name}.data.{key}={value}"
                                                          for name, value in values.items()))
    found[key] = values[names[0]]
  training_images = audit_lib.audit_inputs(config)["training_images"]
  if training_images and training_images != found["source"]:
    raise ValueError(f"--config.audit.training_images={training_images} is not the models' "
                     f"training source --config.<model>.data.source={found['source']}: the demo "
                     "audits the samples against the images the models trained on")
  return TrainingSet(str(found["source"]), found["num_images"], int(found["subset_seed"] or 0),
                     int(found["downsample"] or 1), bool(found["volumes"]))


def check_trains_on(options: ml_collections.ConfigDict, name: str, data_set: TrainingSet) -> Any:
  """The training set as stored (`data_set.open()`); raises unless training reads exactly it.

  The memorization question is about the images a model was trained on, so the demo checks,
  before training, that the loop's data (memjax/train/inputs.py, which prepares the source on
  first use) is the subset that the audit compares with, pixel for pixel.
  """
  from memjax.train import inputs  # pylint: disable=g-import-not-at-top
  data = inputs.open_training_data(options.data)
  train = data_set.open()
  audited = train.read(0, len(train), dtype=None)
  if len(data.source) != len(audited):
    raise ValueError(f"{name} trains on {len(data.source)} images ({data.description}) but the "
                     f"demo would audit its samples against the {len(audited)} of "
                     f"{train.description}: the training data ignores --config.data.num_images")
  trained = np.stack([np.asarray(data.source[i]["image"]) for i in range(len(data.source))])
  if (trained.size != audited.size
      or not np.array_equal(trained.reshape(audited.shape), audited)):
    raise ValueError(f"{name} trains on other images than {train.description}, which the demo "
                     "would audit its samples against")
  return train


def median_pairwise_correlation(images: Any, limit: int = VARIETY_IMAGES) -> float | None:
  """The median Pearson correlation between two different images of the first `limit` of
  `images` (an ImageSource), in float64; None for fewer than two images with variance.

  A set's variety: a generator whose samples are more alike one another than the training
  images are has collapsed onto few images, and cannot copy many training images whatever it
  has learned of them.
  """
  block = images.read(0, min(len(images), limit), dtype=np.float64).reshape(
      min(len(images), limit), -1)
  block = block - block.mean(axis=1, keepdims=True)
  norms = np.linalg.norm(block, axis=1)
  block = block[norms > 0] / norms[norms > 0, None]
  if len(block) < 2:
    return None
  return float(np.median((block @ block.T)[np.triu_indices(len(block), 1)]))


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


def _audit(config: ml_collections.ConfigDict, out: pathlib.Path, inputs: dict[str, Any],
           images: dict[str, Any], holdout_max: np.ndarray | None) -> list[Any]:
  """Audits images["synthetic"] against images["train"] into `out` unless `out` holds an audit
  of the same inputs; returns its results (`AuditResult`s: pixel correlation, then the
  transform-tolerant correlation).

  `holdout_max`: the training-vs-holdout maxima of an earlier model's audit (the same two sets),
  so that the calibration search runs once per demo, not once per model.
  """
  from memjax import parallel  # pylint: disable=g-import-not-at-top
  from memjax.memorization import audit as audit_lib  # pylint: disable=g-import-not-at-top
  from memjax.memorization import result as result_lib  # pylint: disable=g-import-not-at-top
  recorded = out / _AUDIT_INPUTS
  if (recorded.exists() and (out / "summary.json").exists()
      and json.loads(recorded.read_text()) == inputs):
    say(f"  reusing the audit in {out}")
    return result_lib.read_results(out)
  options = audit_lib.AuditOptions.from_config(config.audit)
  audit = audit_lib.run_audit(
      out, synthetic=images["synthetic"], train=images["train"], holdout=images["holdout"],
      options=dataclasses.replace(options, detectors=("correlation", "transformed"),
                                  detector=None),
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


def _check_models(config: ml_collections.ConfigDict) -> list[str]:
  if not config.get("models"):
    raise ValueError("the demo workflow needs the models to train and their configs: run it "
                     "with --config=configs/demo.py")
  names = list(config.models)
  for name in names:
    if name not in config:
      raise ValueError(f"--config.models names {name!r}, but the config has no {name!r} section "
                       "(its training config)")
  return names


def run_demo(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs the demo in `workdir`; returns what it writes to summary.json."""
  from memjax.data import sources  # pylint: disable=g-import-not-at-top
  from memjax.memorization import audit as audit_lib  # pylint: disable=g-import-not-at-top
  from memjax.memorization import report  # pylint: disable=g-import-not-at-top
  from memjax.memorization.report import comparison_page  # pylint: disable=g-import-not-at-top
  from memjax import train as train_lib  # pylint: disable=g-import-not-at-top
  from memjax.train import sampling  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  names = _check_models(config)
  data = training_set(config, names)
  holdout_spec = audit_lib.audit_inputs(config)["holdout_images"]
  if not holdout_spec:
    raise ValueError("the demo calibrates its threshold on --config.audit.holdout_images; give "
                     "one")
  start = time.perf_counter()
  stages = 3 * len(names) + 1
  audits, models = [], {}
  train = holdout = holdout_max = None
  for n, name in enumerate(names):
    options = config[name]
    model_dir = workdir / name
    trained_on = check_trains_on(options, name, data)  # (The source is prepared on first use.)
    if train is None:
      train = data.at_training_resolution(trained_on)
      holdout = data.at_training_resolution(sources.open_source(holdout_spec))
    say(f"[{3 * n + 1}/{stages}] training {name} on {train.description} in {model_dir}")
    step, seconds = _train(options, model_dir)
    say(f"[{3 * n + 2}/{stages}] sampling {options.num_samples} images from {name}")
    samples = sampling.sample(options, model_dir, train_lib.make_trainer(options))
    synthetic = data.at_training_resolution(sources.open_source(samples))
    audit_dir = workdir / "audit" / name
    say(f"[{3 * n + 3}/{stages}] auditing {name}'s samples against {train.description}")
    audit = config.audit
    inputs = {"samples_step": step, "seed": int(options.seed),
              "num_samples": int(options.num_samples), "train": data.source,
              "num_training_images": len(train), "subset_seed": data.subset_seed,
              "audit_downsample": data.downsample, "holdout": holdout_spec, "k": int(audit.k),
              "holdout_percentile": float(audit.holdout_percentile),
              "precision": audit.precision, "num_pairs": int(audit.num_pairs),
              "redact_training_images": bool(audit.redact_training_images),
              "detectors": "correlation,transformed"}
    results = _audit(config, audit_dir, inputs,
                     {"synthetic": synthetic, "train": train, "holdout": holdout}, holdout_max)
    result = results[0]
    holdout_max = result.holdout_max_correlation
    detector = audit_lib.detector_summary(result, synthetic, train)
    figures = {
        "fraction_memorized": detector["fraction_memorized"],
        "threshold": result.threshold,
        "median_max_correlation": detector["max_correlation_quantiles"]["median"],
        "median_pairwise_correlation": median_pairwise_correlation(synthetic),
        **{f"fraction_above_{t}": v for t, v in detector["fraction_above"].items()},
        "num_samples": len(synthetic),
        "num_training_images": len(train),
        "training_steps": step,
        "images_seen": step * int(options.batch_size),
        "training_seconds": seconds,
        "samples": str(samples),
        "audit": str(audit_dir),
    }
    if len(results) > 1:  # flipped, turned or shifted copies (the "transformed" detector)
      figures["fraction_memorized_transformed"] = audit_lib.detector_summary(
          results[1], synthetic, train)["fraction_memorized"]
    models[name] = figures
    audits.append((report.ModelAudit(name, synthetic, result, figures), detector))

  first = audits[0][0].result
  result_sentence = comparison_page.result_sentence(models)
  training_variety = median_pairwise_correlation(train)
  variety = comparison_page.variety_note(models, training_variety)
  summary = audit_lib.json_safe({
      "models": models,
      "result": result_sentence,
      "variety": variety,
      "training_median_pairwise_correlation": training_variety,
      "training_images": data.source,
      "training_set": data.describe(train),
      "holdout_images": holdout_spec,
      "threshold": audits[0][1]["threshold"],
      "holdout_max_correlation_quantiles": audits[0][1]["holdout_max_correlation_quantiles"],
      "redacted": bool(config.audit.redact_training_images),
      "wall_seconds": time.perf_counter() - start,
  })
  say(f"[{stages}/{stages}] writing the comparison to {workdir / 'report.html'}")
  if jax.process_index() == 0:
    report.write_comparison_report(
        workdir / "report.html", models=[a for a, _ in audits], train=train,
        threshold=first.threshold, threshold_rule=first.threshold_rule,
        holdout_max_correlation=first.holdout_max_correlation,
        settings=_settings(config, names),
        num_pairs=int(config.get("report_pairs", 4)),
        redact=bool(config.audit.redact_training_images),
        result=result_sentence, variety=variety, training_set=summary["training_set"])
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"  {result_sentence}")
    say(f"report: {workdir / 'report.html'}")
  return summary
