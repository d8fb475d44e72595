r"""Measures memjax's memorization detectors on planted copies: recall, false positives, ROC AUC.

  python tools/validate_detectors.py --workdir=runs/validate_detectors
  python tools/validate_detectors.py --workdir=runs/validate_cxr \
      --config=configs/cxr_contrastive.py --train=tfds:cxr_pneumonia/256:train \
      --holdout=tfds:cxr_pneumonia/256:test

Trains a contrastive encoder on --train with --config (default configs/demo_contrastive.py, on
the MNI152 slices that ship with the install: a few minutes on a CPU), or reuses the one already
trained in --workdir/encoder; plants copies of training images (exact, intensity-scaled, noisy,
shifted by 2-8 pixels, flipped, rotated by 3-10 degrees, cropped and resized; see
memjax/memorization/validation.py) among the held-out real images of --holdout, which copy
nothing; and prints, for each detector, the share of each kind of copy it flags at its
calibrated threshold (the 95th percentile of the training images' scores against --holdout,
Dar et al.'s rule), the share of held-out images it flags (false positives), and the ROC AUC of
copies against held-out images. --neighbors adds slices next to training slices of the training
subjects (not trained on) as a class of their own. Meehan et al.'s C_T, a test of a whole set,
is printed per kind. The table, and the scores behind it, go to --workdir/validation.{txt,json}.
User errors print one line and exit with status 2 (MEMJAX_TRACEBACK=1 shows the traceback).
"""

import json
import logging as std_logging
import pathlib
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))  # For configs/, which the config files import.

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_REPO / "configs" / "demo_contrastive.py"),
    "Contrastive encoder config (configs/*_contrastive.py); its data.source becomes --train.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/validate_detectors",
                               "Encoder checkpoints (workdir/encoder) and the results.")
_TRAIN = flags.DEFINE_string("train", "tfds:mni152/64:train", "The training images.")
_HOLDOUT = flags.DEFINE_string("holdout", "tfds:mni152/64:holdout",
                               "Held-out real images: the calibration set and the novel images.")
_NEIGHBORS = flags.DEFINE_string(
    "neighbors", None, "Optional: slices next to training slices of the training subjects, not "
    "trained on (each labelled with its most correlated training image).")
_COPIES = flags.DEFINE_integer("copies_per_kind", 200,
                               "Copies of each kind (of distinct training images while they last).")
_MAX_NOVEL = flags.DEFINE_integer("max_novel", 500, "Held-out images planted as novel, at most.")
_VOLUMES = flags.DEFINE_bool("volumes", False, "The images are 3D volumes (D, H, W[, C]).")
_PERCENTILE = flags.DEFINE_float("percentile", 95.0, "Of the calibration scores (Dar et al.).")
_CT_CELLS = flags.DEFINE_integer("ct_cells", 1, "k-means cells of Meehan et al.'s C_T.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the planted copies.")
_SKIP_EMBEDDING = flags.DEFINE_bool("skip_embedding", False,
                                    "Pixel detectors only: train no encoder.")

MNI152_NOTE = (
    "The MNI152 template is one brain: its held-out images are the odd axial slices, each 1 mm "
    "from two training slices (pixel correlation 0.98-0.995). They are the hardest negatives "
    "there are, neighbouring slices of a training subject: the neighbour class and the novel "
    "images are one here. They serve as both the calibration set (training -> held-out best "
    "matches) and the novel images (held-out -> training). A data set of several subjects "
    "separates the two: --holdout of other subjects, --neighbors of the training subjects.")


def _read_all(source, indices=None):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if indices is None:
    return source.read(0, len(source), dtype=None)
  return np.stack([source.read(int(i), int(i) + 1, dtype=None)[0] for i in indices])


def run(config, workdir: pathlib.Path) -> str:
  """Trains (or reuses) the encoder, plants, validates; returns the printed report."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from memjax import parallel
  from memjax.data import sources
  from memjax.memorization import correlation
  from memjax.memorization import validation
  from memjax.train import contrastive
  from memjax.train import loop
  # pylint: enable=g-import-not-at-top
  started = time.perf_counter()
  train = sources.open_source(_TRAIN.value)
  holdout = sources.open_source(_HOLDOUT.value)
  sources.check_same_shape(holdout, train)
  rng = np.random.default_rng(_SEED.value)
  copy_count = min(_COPIES.value, len(train))
  copied = np.sort(rng.choice(len(train), copy_count, replace=False))
  novel = np.sort(rng.choice(len(holdout), min(_MAX_NOVEL.value, len(holdout)), replace=False))
  neighbors = neighbor_sources = None
  if _NEIGHBORS.value:
    neighbor_source = sources.open_source(_NEIGHBORS.value)
    sources.check_same_shape(neighbor_source, train)
    neighbors = _read_all(neighbor_source)
    neighbor_sources = correlation.top_k_correlation(neighbors, train, 1)[1][:, 0]
  planted = validation.plant_copies(
      _read_all(train, copied), _read_all(holdout, novel), copies_per_kind=copy_count,
      neighbors=neighbors, neighbor_sources=neighbor_sources, train_indices=copied,
      volumes=_VOLUMES.value, seed=_SEED.value)

  embed_fn = None
  lines = []
  if not _SKIP_EMBEDDING.value:
    config.data.source = _TRAIN.value
    encoder_dir = workdir / "encoder"
    trained = time.perf_counter()
    loop.train(config, encoder_dir, contrastive.make_trainer(config))
    embed_fn = contrastive.load_embedder(encoder_dir)
    lines.append(f"encoder: {embed_fn.description}, {embed_fn.embedding_dim}-d, in "
                 f"{encoder_dir} ({time.perf_counter() - trained:.0f} s to train or load)")
  mesh = parallel.data_mesh()
  result = validation.validate(planted, train, holdout, embed_fn=embed_fn,
                               percentile=_PERCENTILE.value, ct_cells=_CT_CELLS.value,
                               seed=_SEED.value, mesh=mesh)

  counts = {kind: int(np.sum(planted.kinds == kind)) for kind in dict.fromkeys(planted.kinds)}
  lines = [
      f"training set {train.description} ({len(train)} images of shape {train.shape}); held-out "
      f"{holdout.description} ({len(holdout)})",
      "planted: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()),
      *lines,
      "",
      f"% flagged at the calibrated threshold ({_PERCENTILE.value:g}th percentile of the training "
      "images' scores against the held-out set; distances: the "
      f"{100 - _PERCENTILE.value:g}th); FPR = novel held-out images flagged (of "
      f"{counts.get('novel', 0)}); AUC = copies vs novel",
      validation.format_table(result.evaluations),
      "",
      "the same at each detector's operating point: the loosest threshold that flags at most 5% "
      "of the novel images, chosen on them (what the score can do, not what its calibration does)",
      validation.format_table(result.evaluations, operating_point=True),
      "",
      f"Meehan et al.'s C_T per planted set ({_CT_CELLS.value} cell(s); << 0: copied; the "
      "novel set is one half of the held-out images against the other)",
      validation.format_data_copying(result.data_copying),
  ]
  if "mni152" in train.description and "mni152" in holdout.description:
    lines += ["", MNI152_NOTE]
  lines += [f"note: {note}" for note in result.notes]
  lines.append(f"({time.perf_counter() - started:.0f} s in all)")
  report = "\n".join(lines)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "validation.txt").write_text(report + "\n")
  (workdir / "validation.json").write_text(json.dumps({
      "train": train.description, "holdout": holdout.description, "counts": counts,
      "evaluations": [{"name": e.name, "threshold": e.threshold, "rule": e.rule,
                       "lower_is_copy": e.lower_is_copy, "rates": dict(e.rates),
                       "auc": e.auc, "auc_by_kind": dict(e.auc_by_kind),
                       "operating_threshold": e.operating_threshold,
                       "operating_rates": dict(e.operating_rates)}
                      for e in result.evaluations],
      "data_copying": result.data_copying,
      "planted": {"kinds": planted.kinds.tolist(), "sources": planted.sources.tolist(),
                  "parameters": [None if np.isnan(p) else float(p)
                                 for p in planted.parameters]},
  }, indent=1) + "\n")
  return report


def main(argv):
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from memjax import cli  # pylint: disable=g-import-not-at-top
  report = cli.run_reporting_user_errors(
      lambda: run(_CONFIG.value, pathlib.Path(_WORKDIR.value)))
  print(report)


if __name__ == "__main__":
  from memjax import cli as _cli  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=_cli.parse_tool_flags)
