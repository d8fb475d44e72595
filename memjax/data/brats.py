"""`brats2020` and `brats2021`: BraTS training subjects as axial slices or volumes.

BraTS is obtained by registering for the challenge (BraTS 2020: the CBICA Image Processing
Portal; BraTS 2021: Synapse, syn25829067) and never downloaded by memjax. `manual_dir` holds the
official layout (a subject folder may sit in `manual_dir` or one folder below it):

  brats2020: MICCAI_BraTS2020_TrainingData/BraTS20_Training_NNN/
             BraTS20_Training_NNN_{t1,t1ce,t2,flair,seg}.nii[.gz]
  brats2021: BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz

Config `slices` is the preprocessing of Akbar et al. (MLST 2025): each modality is divided by its
own maximum and scaled to 0-255; axial slice z (0-based) is `volume[:, :, z]` as stored, zero-
padded, centred, from 240x240 to 256x256 (`slice_size`); a slice is kept when more than 15% of
its pixels have a T1 value above 50 of 255. Five uint8 channels: t1, t2, flair, t1ce, and seg as
label / 5 * 255 (labels 1, 2, 4 -> 51, 102, 204). Config `volumes` holds the same five channels
as (D, H, W, 5) uint8 volumes, D the axial axis (volume[z] is slice z), padded or cropped,
centred, to `volume_shape`.

Splits are by subject, never by slice: the sorted subject ids are permuted with `split_seed`,
the last `num_test_subjects` (56, as in the paper) form `test` and the others `train`
(`num_subjects` keeps only the first N of them, for small training sets; the test subjects stay
the same). These are the paper's split sizes (313 + 56 subjects for BraTS 2020, 1195 + 56 for
2021) but not its subjects: its permutation came from MATLAB's randperm and is not published.
A subject with a missing or unreadable modality (or, for `slices`, no slice that passes the
coverage rule) is skipped with a warning naming it; a split left with no example is a one-line
error that says why. The metadata (`builder.info.metadata`, metadata.json) lists the subjects
written to each split (`train_subjects`, `test_subjects`), the skipped ones with the reason
(`skipped_subjects`) and their count (`num_skipped_subjects`); `strict=True` makes a skip an
error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from memjax.data import preprocessing
from memjax.data import tfds_builder
from memjax.data.sources import base

MODALITIES = ("t1", "t2", "flair", "t1ce")  # Channel order, then "seg".
CHANNELS = MODALITIES + ("seg",)
NUM_TEST_SUBJECTS = 56
_MAX_LABEL = 5  # seg channel = label / 5 * 255.
_NIFTI_SUFFIXES = (".nii.gz", ".nii")

_logger = logging.getLogger(__name__)


class SubjectError(ValueError):
  """A subject whose files are missing or unreadable."""


@dataclasses.dataclass
class BratsConfig(tfds.core.BuilderConfig):
  """Slices or volumes, their size, and which subjects go where."""
  kind: str = "slices"  # "slices" or "volumes".
  slice_size: int = 256
  volume_shape: tuple[int, int, int] = (160, 240, 240)  # (D axial, H, W).
  num_subjects: int | None = None  # Training subjects kept; None: all.
  num_test_subjects: int = NUM_TEST_SUBJECTS
  split_seed: int = 0


def subset_config(kind: str, num_subjects: int, **overrides: Any) -> BratsConfig:
  """A config with only the first `num_subjects` training subjects (its own name and folder)."""
  if kind not in ("slices", "volumes"):
    raise ValueError(f"kind must be 'slices' or 'volumes', not {kind!r}")
  return BratsConfig(name=f"{kind}_{num_subjects}subjects", kind=kind,
                     num_subjects=num_subjects,
                     description=f"{kind} of the first {num_subjects} training subjects.",
                     **overrides)


@dataclasses.dataclass(frozen=True)
class Subject:
  """One subject folder: its id and the path of each channel's file (None when missing)."""
  subject_id: str
  folder: str
  files: dict[str, str | None]


def find_subjects(manual_dir: str, folder_pattern: re.Pattern[str]) -> list[Subject]:
  """The subject folders in `manual_dir` or one folder below it, sorted by id."""
  found: dict[str, Subject] = {}
  roots = [manual_dir] + sorted(
      os.path.join(manual_dir, name) for name in os.listdir(manual_dir)
      if not name.startswith(".") and os.path.isdir(os.path.join(manual_dir, name))
      and not folder_pattern.match(name))
  for root in roots:
    for name in sorted(os.listdir(root)):
      folder = os.path.join(root, name)
      if not folder_pattern.match(name) or not os.path.isdir(folder):
        continue
      if name in found:
        raise ValueError(f"subject {name} appears twice, in {found[name].folder} and {folder}; "
                         "keep one copy in manual_dir")
      files = {}
      for channel in CHANNELS:
        candidates = [os.path.join(folder, f"{name}_{channel}{suffix}")
                      for suffix in _NIFTI_SUFFIXES]
        # lexists: a FIFO or a broken link is found here, and refused (never opened) by _load.
        files[channel] = next((path for path in candidates if os.path.lexists(path)), None)
      found[name] = Subject(name, folder, files)
  return [found[name] for name in sorted(found)]


def split_subjects(subject_ids: list[str], *, seed: int, num_test: int,
                   num_train: int | None = None) -> tuple[list[str], list[str]]:
  """(train, test) ids: the sorted ids permuted by `seed`, the last `num_test` are test."""
  ids = sorted(subject_ids)
  if len(ids) <= num_test:
    raise ValueError(f"found {len(ids)} subjects, but {num_test} are held out for the test "
                     "split and at least one must remain for training")
  order = np.random.default_rng(seed).permutation(len(ids))
  permuted = [ids[i] for i in order]
  train, test = permuted[:len(ids) - num_test], permuted[len(ids) - num_test:]
  if num_train is not None:
    if not 1 <= num_train <= len(train):
      raise ValueError(f"num_subjects={num_train}, but {len(train)} training subjects are "
                       "available")
    train = train[:num_train]
  return train, test


def _load(subject: Subject, channel: str) -> np.ndarray:
  """One channel's volume as float64, or SubjectError naming the file and the problem."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top

  path = subject.files[channel]
  if path is None:
    others = sorted(name for name in os.listdir(subject.folder)
                    if name.lower().endswith(_NIFTI_SUFFIXES))
    raise SubjectError(f"{subject.subject_id}: no {channel} file "
                       f"({subject.subject_id}_{channel}.nii.gz or .nii) in {subject.folder}, "
                       f"which holds {others}")
  problem = base.not_a_regular_file(path)
  if problem is not None:  # Opening a FIFO would block the build.
    raise SubjectError(f"{subject.subject_id}: {path} is {problem}, not a regular file")
  try:
    volume = np.asarray(nib.load(path, mmap=False).get_fdata(dtype=np.float64))
  except Exception as e:  # pylint: disable=broad-except  (nibabel, gzip and zlib errors vary)
    raise SubjectError(f"{subject.subject_id}: {path} cannot be read ({type(e).__name__}: {e})"
                       ) from e
  if volume.ndim != 3:
    raise SubjectError(f"{subject.subject_id}: {path} has shape {volume.shape}, not a 3D volume")
  return volume


def subject_volume(subject: Subject, frame: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """A subject's five channels and the coverage of each axial slice.

  Returns:
    (X', Y', Z, 5) uint8 channels, padded or cropped to `frame` = (X', Y') on the slice axes,
    and (Z,) floats: each axial slice's coverage (`preprocessing.coverage` of its padded T1),
    which the paper's rule (`preprocessing.keep_slice`) compares with MIN_COVERAGE.

  Raises:
    SubjectError: naming the subject and the file for a missing or unreadable channel.
  """
  channels, shape, coverage = [], None, None
  for channel in CHANNELS:
    volume = _load(subject, channel)
    if shape is None:
      shape = volume.shape
    elif volume.shape != shape:
      raise SubjectError(f"{subject.subject_id}: {subject.files[channel]} has shape "
                         f"{volume.shape}, but {subject.files[CHANNELS[0]]} has {shape}")
    where = f"{subject.subject_id}: {subject.files[channel]}"
    if channel == "seg":
      labels = volume
      if (not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels))
          or labels.min() < 0 or labels.max() > _MAX_LABEL):
        raise SubjectError(f"{where} holds values other than labels 0-{_MAX_LABEL}")
      scaled = labels / _MAX_LABEL * 255
    else:
      try:
        scaled = preprocessing.scale_to_255(volume, where)
      except ValueError as e:
        raise SubjectError(str(e)) from e
    scaled = preprocessing.center_pad_or_crop(scaled, frame)
    if channel == "t1":
      coverage = np.array([preprocessing.coverage(scaled[:, :, z]) for z in range(shape[2])])
    channels.append(preprocessing.to_uint8(scaled))
  return np.stack(channels, axis=-1), coverage


class BratsBuilder(tfds_builder.ArrayRecordBuilder, skip_registration=True):
  """The builder of one BraTS edition; subclasses name the edition's folders."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      BratsConfig(name="slices", kind="slices",
                  description="256x256 axial slices with >15% T1 coverage (Akbar et al.)."),
      BratsConfig(name="volumes", kind="volumes",
                  description="(160, 240, 240, 5) volumes, axial axis first."),
  ]
  SUBJECT_PATTERN: re.Pattern[str]
  HOMEPAGE = ""

  def __init__(self, *, strict: bool = False, **kwargs: Any):
    self._strict = bool(strict)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    subject_id = tfds.features.Text(doc="The subject folder's name, e.g. BraTS20_Training_001.")
    if config.kind == "slices":
      size = config.slice_size
      features = tfds.features.FeaturesDict({
          "image": tfds_builder.image_feature(
              (size, size, len(CHANNELS)), "t1, t2, flair, t1ce: 0-255 of each volume's max; "
              "seg: label / 5 * 255"),
          "subject_id": subject_id,
          "slice_index": tfds.features.Scalar(np.int32, doc="Axial index z (0-based)."),
      })
    elif config.kind == "volumes":
      features = tfds.features.FeaturesDict({
          "image": tfds_builder.image_feature(
              (*config.volume_shape, len(CHANNELS)), "(D axial, H, W, [t1, t2, flair, t1ce, "
              "seg]); as the slices"),
          "subject_id": subject_id,
      })
    else:
      raise ValueError(f"{self.name}: unknown kind {config.kind!r} in config {config.name!r}")
    return self._dataset_info(features, description=__doc__, homepage=self.HOMEPAGE,
                              citation=_CITATION)

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    config = self.builder_config
    manual_dir = self._manual_dir(dl_manager)
    subjects = find_subjects(manual_dir, self.SUBJECT_PATTERN)
    if not subjects:
      raise FileNotFoundError(f"{self.name}: no subject folders in {manual_dir}; "
                              f"{self.MANUAL_DIR_ERROR}")
    train, test = split_subjects([s.subject_id for s in subjects], seed=config.split_seed,
                                 num_test=config.num_test_subjects,
                                 num_train=config.num_subjects)
    by_id = {s.subject_id: s for s in subjects}
    self._skipped: dict[str, str] = {}
    metadata = self.info.metadata
    metadata.update(split_seed=config.split_seed, train_subjects=sorted(train),
                    test_subjects=sorted(test), skipped_subjects=self._skipped,
                    num_skipped_subjects=0)
    return {"train": self._generate_examples([by_id[i] for i in sorted(train)], "train"),
            "test": self._generate_examples([by_id[i] for i in sorted(test)], "test")}

  def _read_subject(self, subject: Subject) -> tuple[Subject, Any]:
    """A subject's examples' inputs, or the SubjectError that skips it."""
    config = self.builder_config
    frame = ((config.slice_size,) * 2 if config.kind == "slices"
             else tuple(config.volume_shape[1:]))
    try:
      return subject, subject_volume(subject, frame)
    except SubjectError as e:
      return subject, e

  def _skip(self, subject: Subject, reason: str) -> None:
    """Records a skipped subject (or, strict, fails naming it and why)."""
    if self._strict:
      raise SubjectError(f"{reason} (strict: fix or remove the subject)")
    _logger.warning("%s: skipping subject %s", self.name, reason)
    self._skipped[subject.subject_id] = reason
    metadata = self.info.metadata
    metadata["num_skipped_subjects"] = len(self._skipped)
    for key in ("train_subjects", "test_subjects"):
      metadata[key] = [i for i in metadata[key] if i != subject.subject_id]

  def _filter_rule(self) -> str:
    size = self.builder_config.slice_size
    return (f"a slice is kept when more than {preprocessing.MIN_COVERAGE:.0%} of its {size}x{size} "
            f"pixels have T1 above {preprocessing.COVERAGE_LEVEL:.0f} of 255")

  def _generate_examples(self, subjects: list[Subject], split: str):
    config = self.builder_config
    results = tfds_builder.lookahead_map(self._read_subject, subjects, num_threads=4,
                                         lookahead=4)
    results = tfds_builder.progress(results, len(subjects), f"{split} subjects", " subjects")
    num_written, best_coverage = 0, 0.0
    for rank, (subject, result) in enumerate(results):
      if isinstance(result, SubjectError):
        self._skip(subject, str(result))
        continue
      channels, coverage = result
      if config.kind == "volumes":
        num_written += 1
        volume = np.moveaxis(channels, 2, 0)  # (Z, X', Y', 5): slice z is volume[z].
        yield rank, {"image": preprocessing.center_pad_or_crop(volume, config.volume_shape),
                     "subject_id": subject.subject_id}
        continue
      keep = [z for z in range(len(coverage)) if coverage[z] > preprocessing.MIN_COVERAGE]
      best_coverage = max(best_coverage, float(coverage.max(initial=0.0)))
      if not keep:
        self._skip(subject, f"{subject.subject_id}: no axial slice passes the brain-slice filter "
                            f"({self._filter_rule()}); its best slice covers "
                            f"{coverage.max(initial=0.0):.1%}")
        continue
      num_written += 1
      for z in keep:
        yield rank * 10_000 + z, {"image": channels[:, :, z], "subject_id": subject.subject_id,
                                  "slice_index": z}
    if not num_written:
      # Raised here, with the reason: TFDS would only say "No examples were yielded".
      raise ValueError(self._no_example_error(subjects, split, best_coverage))

  def _no_example_error(self, subjects: list[Subject], split: str, best_coverage: float) -> str:
    """One line: the split's subjects, their folder, and why none of them gave an example."""
    if not subjects:
      return f"{self.name}: the {split} split has no subjects (num_test_subjects is 0?)"
    ids = [s.subject_id for s in subjects]
    named = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    folder = os.path.dirname(subjects[0].folder)
    reasons = [self._skipped.get(i, "") for i in ids]
    if all("brain-slice filter" in reason for reason in reasons):
      return (f"{self.name}: no slice of the {split} split's {len(ids)} subjects ({named}) in "
              f"{folder} passes the brain-slice filter ({self._filter_rule()}); the best slice "
              f"covers {best_coverage:.1%}. Check that the t1 files hold brain scans (not empty "
              "or mostly background), or prepare the volumes config, which keeps whole volumes")
    return (f"{self.name}: every subject of the {split} split was skipped ({named}, in "
            f"{folder}); the first: {reasons[0]}")


class Brats2020(BratsBuilder):
  """BraTS 2020 training data (369 subjects: 313 train, 56 test in the paper's split)."""

  SUBJECT_PATTERN = re.compile(r"^BraTS20_Training_\d{3}$")
  HOMEPAGE = "https://www.med.upenn.edu/cbica/brats2020/data.html"
  MANUAL_DIR_ERROR = (
      "BraTS 2020 is obtained by registering on the challenge's pages (CBICA Image Processing "
      "Portal, https://www.med.upenn.edu/cbica/brats2020/registration.html); manual_dir must "
      "hold MICCAI_BraTS2020_TrainingData/BraTS20_Training_NNN/"
      "BraTS20_Training_NNN_{t1,t1ce,t2,flair,seg}.nii[.gz]")
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_ERROR


class Brats2021(BratsBuilder):
  """BraTS 2021 training data (1251 subjects: 1195 train, 56 test in the paper's split)."""

  SUBJECT_PATTERN = re.compile(r"^BraTS2021_\d{5}$")
  HOMEPAGE = "http://braintumorsegmentation.org/"
  MANUAL_DIR_ERROR = (
      "BraTS 2021 is obtained by registering for the RSNA-ASNR-MICCAI BraTS 2021 challenge on "
      "Synapse (https://www.synapse.org/#!Synapse:syn25829067); manual_dir must hold "
      "BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz")
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_ERROR


_CITATION = """\
@article{akbar2025beware,
  title={Beware of diffusion models for synthesizing medical images},
  author={Akbar, Muhammad Usman and Wang, Wuhao and Eklund, Anders},
  journal={Machine Learning: Science and Technology}, volume={6}, pages={015022}, year={2025}}
@article{menze2015brats,
  title={The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)},
  author={Menze, Bjoern H. and others},
  journal={IEEE Transactions on Medical Imaging}, volume={34}, number={10}, year={2015}}
"""
