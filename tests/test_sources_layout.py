"""Tests for the layout of memjax.data.sources: which module imports which, and the public names.

base.py imports none of the other source modules, arrays.py only base, folders.py base and
arrays, tfds.py only base; the package imports them all. memjax/data imports nothing else of
memjax, and opening the package imports no TFDS (tfds.py imports it when a source is opened).
"""

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from memjax.data import sources
from memjax.data import tfds_source

_DATA = pathlib.Path(sources.__file__).parents[1]
_ALLOWED = {
    "base": set(),
    "arrays": {"base"},
    "folders": {"base", "arrays"},
    "tfds": {"base"},
}


def _memjax_imports(path: pathlib.Path) -> set[str]:
  """The memjax modules that a file imports, anywhere in it (lazy imports included)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return {name for name in names if name.startswith("memjax.")}


@pytest.mark.parametrize("module", sorted(_ALLOWED))
def test_source_modules_import_no_circle(module):
  imported = _memjax_imports(_DATA / "sources" / f"{module}.py")
  siblings = {name.split(".")[3] for name in imported
              if name.startswith("memjax.data.sources.")}
  assert siblings <= _ALLOWED[module], f"{module}.py imports {sorted(siblings)}"
  assert module == "tfds" or all(name.startswith("memjax.data.sources") for name in imported)


def test_data_imports_nothing_else_of_memjax():
  for path in sorted(_DATA.rglob("*.py")):
    outside = {name for name in _memjax_imports(path) if not name.startswith("memjax.data.")}
    assert not outside, f"{path} imports {sorted(outside)}"


@pytest.mark.parametrize("module", ["memjax.data.sources.base", "memjax.data.sources.arrays",
                                    "memjax.data.sources.folders", "memjax.data.sources.tfds",
                                    "memjax.data.tfds_source"])
def test_each_module_imports_first_in_a_fresh_interpreter(module):
  code = (f"import {module}, sys\n"
          "from memjax.data import sources\n"
          "assert 'tensorflow_datasets' not in sys.modules\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr


def test_public_names():
  for name in ("ImageSource", "ArraySource", "IndexedSource", "NumpyFileSource", "FolderSource",
               "TfdsSource", "aligned_empty", "check_same_shape", "open_source",
               "parse_tfds_spec", "SUPPORTED_EXTENSIONS"):
    assert hasattr(sources, name), name
  assert sources.open is sources.open_source
  assert tfds_source.TfdsSource is sources.TfdsSource is sources.tfds.TfdsSource


def test_layout_is_set_once_in_the_base_class():
  source = sources.ArraySource(np.zeros((3, 4, 5), ">f4"))
  assert (len(source), source.shape, source.dtype) == (3, (4, 5), np.dtype(np.float32))
  subset = sources.IndexedSource(source, [2, 0])
  assert (len(subset), subset.shape, subset.dtype) == (2, (4, 5), np.dtype(np.float32))
