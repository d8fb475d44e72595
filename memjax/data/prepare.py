"""Prepares a data set of the seed paper (array_record files) from the files the user obtained:
the `prepare` workflow (`memjax --config=prepare --config.prepare.dataset=NAME/CONFIG`)."""

from __future__ import annotations

# Data set name -> (module, builder class).
BUILDERS = {"brats2020": ("brats", "Brats2020"), "brats2021": ("brats", "Brats2021"),
            "cxr_pneumonia": ("cxr", "CxrPneumonia"), "mni152": ("mni152", "Mni152")}


def _builder_class(name: str):
  import importlib  # pylint: disable=g-import-not-at-top
  if name not in BUILDERS:
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(sorted(BUILDERS))}")
  module, cls = BUILDERS[name]
  return getattr(importlib.import_module(f"memjax.data.{module}"), cls)


def prepare(dataset: str, manual_dir: str | None, data_dir: str | None, strict: bool,
            num_subjects: int | None) -> str:
  """Builds `dataset` (NAME[/CONFIG]) and returns a one-paragraph summary; ValueError/OSError for
  user errors. Medical data is never downloaded: `manual_dir` holds it as its source
  distributes it; mni152 comes with nilearn."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from memjax.data import brats, tfds_builder  # pylint: disable=g-import-not-at-top

  if not dataset:
    raise ValueError("--config.prepare.dataset is required: NAME[/CONFIG], one of "
                     + ", ".join(sorted(BUILDERS)))
  name, _, config_name = dataset.partition("/")
  builder_class = _builder_class(name)
  config_names = [config.name for config in builder_class.BUILDER_CONFIGS]
  config_name = config_name or config_names[0]
  if config_name not in config_names:
    raise ValueError(f"{name} has no config {config_name!r}; its configs are {config_names}")
  kwargs = {"data_dir": data_dir or tfds_builder.default_data_dir()}
  if num_subjects is not None:
    if not issubclass(builder_class, brats.BratsBuilder):
      raise ValueError(f"num_subjects applies to brats2020 and brats2021, not {name}")
    kwargs["config"] = brats.subset_config(config_name, num_subjects)
  else:
    kwargs["config"] = config_name
  if builder_class.MANUAL_DIR_ERROR:
    tfds_builder.check_manual_dir(manual_dir, name, builder_class.MANUAL_DIR_ERROR)
    kwargs["strict"] = strict
  builder = builder_class(**kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  counts = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
  summary = f"{builder.info.full_name} prepared in {builder.data_dir}: {counts} examples"
  metadata = builder.info.metadata or {}
  for key in ("num_skipped_subjects", "num_skipped_files", "num_unparsed_file_names"):
    if metadata.get(key):
      summary += f"; {key.replace('_', ' ')[4:]}: {metadata[key]} (listed in metadata.json)"
  return summary
