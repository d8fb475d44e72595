"""StyleGAN2 networks from NVlabs' training pickles, with neither NVlabs' code nor torch.

stylegan2-ada-pytorch and stylegan3 write `network-snapshot-NNNNNN.pkl` with `pickle.dump` of
{'G': ..., 'D': ..., 'G_ema': ..., 'augment_pipe': ..., 'training_set_kwargs': {...}}. Each
network is a `torch_utils.persistence` object: it pickles as `_reconstruct_persistent_obj(meta)`,
where meta holds the source code of its module, its class name and its state (the module's
`__dict__`: `_parameters`, `_buffers`, `_modules`, plain attributes and `_init_kwargs`). A tensor
pickles as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and its storage
as `torch.storage._load_from_bytes(bytes)`, a small legacy `torch.save` stream (a pickle whose
persistent ids name the storages, followed by their raw bytes).

`read_nvlabs_pickle` reads such a file with a restricted unpickler: it resolves only the few
globals above (and plain containers and numpy scalars), turns every persistent object into a
`PersistentObject` record without running its source code, and every tensor into a numpy array.
Anything else, a TensorFlow pickle, a `torch.save` archive, or a global outside that list, is
refused with the file's name. The files come from other groups, so the loader treats them as
hostile: numpy dtypes are plain numbers only (never a structured dtype whose fields lie outside
its bytes), nothing is allocated beyond what the file holds (every declared length is checked
against the bytes present before unpickling; a tensor with more elements than its storage, a
stride-0 broadcast, is refused), nesting and size are bounded, and whatever goes wrong is one
`ValueError` naming the file. `load_nvlabs_pickle` then builds memjax's `Generator` and
`Discriminator` with the architecture the pickle's modules record (resolution, channels,
dimensions, mapping depth and learning-rate multiplier, w average decay, conv clamp, minibatch
standard deviation) and copies the weights in with `load_torch_state_dict`, which checks every
name and shape. Only the StyleGAN2 networks load: stylegan2-ada-pytorch's `training.networks`
and stylegan3's `training.networks_stylegan2` (its `--cfg=stylegan2`); a StyleGAN3 generator
(`--cfg=stylegan3-t` or `-r`) has another synthesis network and is refused, though its
discriminator, StyleGAN2's, loads.

`generate_images` draws a seed's z as NVlabs' `gen_images.py` / `generate.py` do
(`np.random.RandomState(seed).randn(1, z_dim)`) and converts to uint8 as they do, so that with
`noise_mode="const"` memjax renders the images the reference's script renders for those seeds;
tools/sample_nvlabs_pickle.py writes them for the audit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import collections
import dataclasses
import functools
import io
import pathlib
import pickle
import pickletools
import struct
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from memjax.models import stylegan2

# torch.save's legacy format starts with this pickled integer (torch/serialization.py).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_NETWORKS = ("G", "D", "G_ema")


@dataclasses.dataclass
class PersistentObject:
  """A pickled `torch_utils.persistence` object as data: its class and its module's `__dict__`.

  The source code the pickle carries is kept only as its length; it is never run.
  """
  class_name: str
  state: dict[str, Any]
  source_length: int = 0

  @property
  def init_kwargs(self) -> dict[str, Any]:
    return _plain(self.state.get("_init_kwargs") or {})

  def child(self, name: str) -> PersistentObject | None:
    return (self.state.get("_modules") or {}).get(name)

  def children(self) -> dict[str, PersistentObject]:
    return {k: v for k, v in (self.state.get("_modules") or {}).items() if v is not None}

  def state_dict(self) -> dict[str, np.ndarray]:
    """Parameters and persistent buffers by dotted name, as torch's `state_dict()` names them."""
    out = {}
    skipped = self.state.get("_non_persistent_buffers_set") or set()
    for name, value in (self.state.get("_parameters") or {}).items():
      if value is not None:
        out[name] = value
    for name, value in (self.state.get("_buffers") or {}).items():
      if value is not None and name not in skipped:
        out[name] = value
    for name, module in self.children().items():
      out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return out

  def modules(self, prefix: str = "") -> Iterable[tuple[str, PersistentObject]]:
    """(dotted name, object) of this module and every module under it."""
    yield prefix, self
    for name, module in self.children().items():
      yield from module.modules(f"{prefix}.{name}" if prefix else name)


@dataclasses.dataclass
class Snapshot:
  """The networks of one NVlabs pickle, built as memjax models (None where the pickle has none)."""
  path: pathlib.Path
  G: stylegan2.Generator | None
  D: stylegan2.Discriminator | None
  G_ema: stylegan2.Generator | None
  training_set_kwargs: dict[str, Any]
  init_kwargs: dict[str, dict[str, Any]]  # each network's constructor arguments, as pickled


class _EasyDict(dict):
  """dnnlib's EasyDict (a dict whose keys are also attributes), as a plain dict subclass."""


class _Storage:
  """A storage named by a legacy torch.save stream: its elements are read after the pickle."""

  def __init__(self, dtype, numel: int):
    self.dtype, self.numel = np.dtype(dtype), int(numel)
    self.array: np.ndarray | None = None


def _plain(value):
  """Pickled kwargs as plain dicts, lists and scalars."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_plain(v) for v in value)
  if isinstance(value, np.generic):
    return value.item()
  return value


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
  """`_codecs.encode`, which protocol-2 pickles use for bytes; only the latin-1 form."""
  if encoding != "latin1" or not isinstance(text, str):
    raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
  return text.encode("latin1")


def _rebuild_tensor(storage, offset, size, stride, *_):
  """A tensor view (offset, size, stride in elements) of a storage's elements, copied out."""
  if not isinstance(storage, np.ndarray):
    raise pickle.UnpicklingError("a tensor whose storage is not a storage")
  size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
  if (len(size) != len(stride) or len(size) > 32 or min(stride, default=0) < 0
      or min(size, default=0) < 0):
    raise pickle.UnpicklingError(f"a tensor of size {size} with strides {stride}")
  count = int(np.prod(size, dtype=object)) if size else 1
  if 0 in size:
    if max(size) >= 2**31:
      raise pickle.UnpicklingError(f"an empty tensor of size {size}")
    return np.zeros(size, storage.dtype)
  if count > storage.size:
    # Only overlapping strides (a stride-0 broadcast) make more elements than the storage
    # holds; NVlabs' networks have none, and copying one out could fill any amount of memory.
    raise pickle.UnpicklingError(
        f"a tensor of size {size} (strides {stride}) with {count} elements over a storage of "
        f"{storage.size}: a broadcast view, which memjax does not read")
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or last >= storage.size:
    raise pickle.UnpicklingError(f"a tensor of size {size} past its storage of {storage.size}")
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], size, tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view)


class _NumpyDtype:
  """`numpy.dtype` as a pickle calls it: only a plain number (bool, int, uint, float, complex).

  A pickled dtype's state (BUILD) could make it a structured dtype whose fields lie outside its
  bytes; reading such a scalar reads other memory. Here the state is checked and never handed
  to numpy: the dtype is rebuilt from its type code and byte order alone.
  """

  def __init__(self, spec, align=False, copy=False):
    del align, copy
    try:
      dtype = np.dtype(spec) if isinstance(spec, str) and len(spec) <= 8 else None
    except TypeError:
      dtype = None
    if dtype is None or dtype.kind not in "biufc" or dtype.fields is not None or dtype.shape:
      raise pickle.UnpicklingError(f"a numpy dtype {spec!r} that is not a plain number")
    self.dtype = dtype

  def __setstate__(self, state):
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ("<", ">", "|", "=")
            and state[2] is None and state[3] is None and state[4] is None
            and state[5] in (-1, self.dtype.itemsize) and isinstance(state[6], int)):
      raise pickle.UnpicklingError(f"a numpy dtype {self.dtype.str} with the state {state!r:.80}: "
                                   "fields, a subarray or a size of its own, not a plain number")
    if state[1] in "<>":
      self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data=None):
  """numpy's pickled scalar: `data` (its bytes) read as the plain numeric `dtype`."""
  if not isinstance(dtype, _NumpyDtype):
    raise pickle.UnpicklingError("a numpy scalar without a plain numeric dtype")
  if not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
    raise pickle.UnpicklingError(f"a numpy {dtype.dtype} scalar of {len(data or b'')} bytes "
                                 f"rather than {dtype.dtype.itemsize}")
  return np.frombuffer(data, dtype.dtype)[0]


class _NumpyArrayType:
  """What the pickle's `numpy.ndarray` names: only `_reconstruct`'s first argument, never called
  (`numpy.ndarray(shape)` would allocate whatever shape the file declares)."""

  def __init__(self, *_):
    raise pickle.UnpicklingError("a call of numpy.ndarray")


class _NumpyArray:
  """numpy's pickled array (`_reconstruct(ndarray, ...)` and its state), read only from the
  bytes the file holds: a plain numeric dtype, a shape whose size those bytes match."""

  def __init__(self, cls, *_):
    if cls is not _NumpyArrayType:
      raise pickle.UnpicklingError("numpy's _reconstruct of something else than an ndarray")
    self.array: np.ndarray | None = None

  def __setstate__(self, state):
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _NumpyDtype)
            and isinstance(state[1], tuple) and isinstance(state[4], bytes)):
      raise pickle.UnpicklingError("a numpy array that is not a plain numeric array of bytes")
    _, shape, dtype, fortran, data = state
    if len(shape) > 32 or not all(isinstance(n, int) and n >= 0 for n in shape):
      raise pickle.UnpicklingError(f"a numpy array of shape {shape!r:.80}")
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count * dtype.dtype.itemsize != len(data):
      raise pickle.UnpicklingError(f"a numpy array of shape {shape} holding {len(data)} bytes, "
                                   f"not the {count * dtype.dtype.itemsize} it needs")
    self.array = np.frombuffer(data, dtype.dtype).reshape(shape, order="F" if fortran else "C")


# Bounds on the unpickled structure (NVlabs' snapshots nest about 30 deep, in about 10^4 values):
# deeper or larger is a crafted file, refused before anything recurses through it.
_MAX_DEPTH = 100
_MAX_VALUES = 1_000_000


def _resolved(contents, path: pathlib.Path):
  """`contents` with the numpy records as numpy values, its depth and size checked."""
  budget = [_MAX_VALUES]

  def visit(value, depth):
    budget[0] -= 1
    if depth > _MAX_DEPTH or budget[0] < 0:
      raise ValueError(f"{path}: a network pickle nested deeper than {_MAX_DEPTH} levels or "
                       f"holding more than {_MAX_VALUES} values; not an NVlabs snapshot")
    if isinstance(value, _NumpyArray):
      return value.array if value.array is not None else np.zeros(0, np.uint8)
    if isinstance(value, _NumpyDtype):
      return value.dtype
    if isinstance(value, PersistentObject):
      visit(value.state, depth + 1)
    elif isinstance(value, dict):
      for key, item in value.items():
        visit(key, depth + 1)
        value[key] = visit(item, depth + 1)
    elif isinstance(value, list):
      value[:] = [visit(item, depth + 1) for item in value]
    elif isinstance(value, tuple):
      items = [visit(item, depth + 1) for item in value]
      if any(a is not b for a, b in zip(items, value)):
        value = type(value)(items)
    elif isinstance(value, (set, frozenset)):
      for item in value:
        if isinstance(item, (_NumpyArray, _NumpyDtype)):
          raise ValueError(f"{path}: a numpy value inside a set; not an NVlabs snapshot")
        visit(item, depth + 1)
    return value

  return visit(contents, 0)


def _scanned(stream: io.BytesIO, path: pathlib.Path) -> io.BytesIO:
  """Checks the pickle at `stream`'s position opcode by opcode (without building anything)
  before it is loaded: a length the file declares but does not hold (a 2^40-byte bytearray in
  a few hundred bytes) is refused here, where unpickling would first allocate it."""
  start = stream.tell()
  try:
    for _ in pickletools.genops(stream):
      pass
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f"{path}: a damaged or truncated network pickle ({_one_line(error)})"
                     ) from None
  stream.seek(start)
  return stream


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= 200 else text[:200] + "..."


def _rebuild_parameter(data, *_):
  return data


def _reconstruct_persistent(meta) -> PersistentObject:
  if not isinstance(meta, dict) or meta.get("type") != "class" or "class_name" not in meta:
    raise pickle.UnpicklingError("a persistent object that is not a class instance")
  state = meta.get("state")
  if not isinstance(state, dict):
    raise pickle.UnpicklingError(f"a persistent {meta['class_name']} without a state dict")
  return PersistentObject(str(meta["class_name"]), dict(state), len(meta.get("module_src") or ""))


class _Restricted(pickle.Unpickler):
  """An unpickler that resolves only `allowed` globals and refuses every other."""

  allowed: Mapping[tuple[str, str], Any] = {}

  def __init__(self, file, path: pathlib.Path):
    super().__init__(file)
    self.path = path

  def find_class(self, module: str, name: str):
    found = self.allowed.get((module, name))
    if found is not None:
      return found
    if module.startswith("dnnlib.tflib"):
      raise ValueError(f"{self.path}: a TensorFlow StyleGAN pickle ({module}.{name}); convert it "
                       "with stylegan2-ada-pytorch's legacy.py first")
    raise ValueError(f"{self.path}: not an NVlabs StyleGAN2 network pickle memjax reads: it needs "
                     f"{module}.{name}, which the restricted loader does not allow")

  def persistent_load(self, pid):
    raise ValueError(f"{self.path}: an unexpected persistent id {pid!r} (a torch.save file?)")


class _StorageUnpickler(_Restricted):
  """The pickle inside a legacy torch.save stream of one storage: storage types, persistent ids."""

  allowed = {("torch", name): name for name in _STORAGE_DTYPES}

  def __init__(self, file, path: pathlib.Path):
    super().__init__(file, path)
    self.storages: dict[str, _Storage] = {}

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
      raise ValueError(f"{self.path}: a tensor storage id {pid!r} memjax does not know")
    _, kind, key, _location, numel, view = pid
    if kind not in _STORAGE_DTYPES:
      raise ValueError(f"{self.path}: a tensor storage of type {kind!r}")
    if view is not None:
      raise ValueError(f"{self.path}: a view {view!r} into a storage, which memjax does not read")
    return self.storages.setdefault(str(key), _Storage(_STORAGE_DTYPES[kind], numel))


def _load_storage(data: bytes, path: pathlib.Path) -> np.ndarray:
  """A storage's elements from its legacy torch.save stream (`torch.storage._load_from_bytes`)."""
  if not isinstance(data, (bytes, bytearray)):
    raise ValueError(f"{path}: a storage that is not bytes")
  if data[:2] == b"PK":
    raise ValueError(f"{path}: a storage in torch's zip format; memjax reads the legacy stream "
                     "that pickling a tensor writes")
  stream = io.BytesIO(data)
  def header(stream, path):  # The header pickles hold only ints, a dict of ints, a key list.
    return _StorageUnpickler(_scanned(stream, path), path)

  try:
    magic, version = header(stream, path).load(), header(stream, path).load()
    system = header(stream, path).load()
    if magic != _LEGACY_MAGIC or version != 1001:
      raise ValueError(f"{path}: a storage stream with magic {magic!r}, version {version!r}")
    if not (isinstance(system, dict) and system.get("little_endian", False)):
      raise ValueError(f"{path}: a storage written on a big-endian machine")
    unpickler = header(stream, path)
    storage = unpickler.load()
    keys = header(stream, path).load()
  except (pickle.UnpicklingError, EOFError, TypeError) as error:
    raise ValueError(f"{path}: a damaged tensor storage ({error})") from None
  if not isinstance(storage, _Storage) or sorted(unpickler.storages) != sorted(keys):
    raise ValueError(f"{path}: a storage stream that does not hold one storage")
  for key in keys:
    record = unpickler.storages[key]
    size = stream.read(8)
    count = struct.unpack("<q", size)[0] if len(size) == 8 else -1
    raw = stream.read(max(count, 0) * record.dtype.itemsize)
    if count != record.numel or len(raw) != count * record.dtype.itemsize:
      raise ValueError(f"{path}: a tensor storage of {record.numel} elements holds "
                       f"{max(count, 0)} ({len(raw)} bytes); the file is truncated or damaged")
    record.array = np.frombuffer(raw, record.dtype).copy()
  return storage.array


class _SnapshotUnpickler(_Restricted):
  """The network pickle itself."""

  def __init__(self, file, path: pathlib.Path):
    super().__init__(file, path)
    self.allowed = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): lambda data: _load_storage(data, path),
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("builtins", "set"): set, ("__builtin__", "set"): set,
        ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
        ("_codecs", "encode"): _latin1,
        ("numpy", "dtype"): _NumpyDtype, ("numpy", "ndarray"): _NumpyArrayType,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
      self.allowed[module, "scalar"] = _numpy_scalar
      self.allowed[module, "_reconstruct"] = _NumpyArray


def read_nvlabs_pickle(path: str | pathlib.Path) -> dict[str, Any]:
  """The unpickled contents of an NVlabs network pickle: `PersistentObject`s and numpy arrays.

  Reads only what a stylegan2-ada-pytorch or stylegan3 snapshot holds; see the module docstring.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such NVlabs network pickle")
  data = path.read_bytes()
  if data[:2] == b"PK":
    raise ValueError(f"{path}: a torch.save archive, not an NVlabs network pickle "
                     "(network-snapshot-*.pkl written by pickle.dump)")
  if data[:1] != b"\x80":
    raise ValueError(f"{path}: not a pickle (protocol 2 or later) of NVlabs networks")
  try:
    contents = _SnapshotUnpickler(_scanned(io.BytesIO(data), path), path).load()
    contents = _resolved(contents, path)
  except Exception as error:  # pylint: disable=broad-except
    # Whatever a crafted file makes go wrong is one error naming it (a ValueError from the
    # checks above already does).
    if isinstance(error, ValueError) and str(error).startswith(f"{path}: "):
      raise ValueError(" ".join(str(error).split())) from None
    raise ValueError(f"{path}: a damaged or truncated network pickle ({_one_line(error)})"
                     ) from None
  if not isinstance(contents, dict) or not any(
      isinstance(contents.get(k), PersistentObject) for k in _NETWORKS):
    raise ValueError(f"{path}: not an NVlabs network pickle: it holds no 'G', 'D' or 'G_ema' "
                     "network")
  return contents


# ----------------------------------------------------------------------------------------------
# memjax models of the pickled networks.


def _fail(path: pathlib.Path, name: str, what: str) -> ValueError:
  return ValueError(f"{path}: {name} {what}")


def _one(values: set, path: pathlib.Path, name: str, what: str):
  if len(values) != 1:
    raise _fail(path, name, f"has {what} {sorted(values, key=repr)}; memjax's has one")
  return next(iter(values))


def _channels(kwargs: Mapping[str, Any]) -> dict[str, int]:
  """channel_base and channel_max, top level (stylegan3) or in synthesis_kwargs (ada-pytorch)."""
  synthesis = kwargs.get("synthesis_kwargs") or {}
  return {key: int(synthesis.get(key, kwargs.get(key, default)))
          for key, default in (("channel_base", 32768), ("channel_max", 512))}


def generator_arguments(network: PersistentObject, path: pathlib.Path, name: str = "G"
                        ) -> dict[str, Any]:
  """memjax `Generator` arguments of a pickled StyleGAN2 generator, from its modules' state."""
  if network.class_name != "Generator":
    raise _fail(path, name, f"is a {network.class_name}, not a Generator")
  synthesis, mapping = network.child("synthesis"), network.child("mapping")
  if synthesis is None or mapping is None:
    raise _fail(path, name, "lacks its mapping or synthesis network")
  if synthesis.child("b4") is None:
    raise _fail(path, name, "is not StyleGAN2's generator (a StyleGAN3 synthesis network, "
                "whose layers are " + ", ".join(list(synthesis.children())[:3]) + ", ...); memjax "
                "implements StyleGAN2: sample it with NVlabs' gen_images.py and audit the images")
  state = network.state
  if int(state.get("c_dim", 0)):
    raise _fail(path, name, f"is class-conditional (c_dim {state['c_dim']}); memjax's is not")
  modules = dict(synthesis.modules())
  blocks = [module for key, module in modules.items() if key.startswith("b") and "." not in key]
  architecture = _one({b.state.get("architecture") for b in blocks}, path, name, "architectures")
  if architecture != "skip":
    raise _fail(path, name, f"has the {architecture!r} architecture; memjax's is 'skip'")
  layers = [m for key, m in modules.items() if key.rsplit(".", 1)[-1] in ("conv0", "conv1")]
  for what, expected in (("use_noise", True), ("activation", "lrelu")):
    found = {m.state.get(what, expected) for m in layers}
    if found != {expected}:
      raise _fail(path, name, f"has synthesis layers with {what} {sorted(found, key=repr)}; "
                  f"memjax's have {expected!r}")
  clamps = {m.state.get("conv_clamp") for key, m in modules.items()
            if key.rsplit(".", 1)[-1] in ("conv0", "conv1", "torgb")}
  conv_clamp = _one(clamps, path, name, "conv clamps")
  mapping_layers = int(mapping.state["num_layers"])
  first = mapping.child("fc0")
  if first is None or mapping.child("embed") is not None:
    raise _fail(path, name, "has a mapping network memjax does not (no fc0, or a label embed)")
  w_avg_beta = mapping.state.get("w_avg_beta")
  return dict(img_resolution=int(state["img_resolution"]),
              img_channels=int(state["img_channels"]), z_dim=int(state["z_dim"]),
              w_dim=int(state["w_dim"]), mapping_layers=mapping_layers,
              mapping_lr_multiplier=float(first.state["bias_gain"]),
              w_avg_beta=0.995 if w_avg_beta is None else float(w_avg_beta),
              conv_clamp=None if conv_clamp is None else float(conv_clamp),
              **_channels(network.init_kwargs))


def discriminator_arguments(network: PersistentObject, path: pathlib.Path, name: str = "D"
                            ) -> dict[str, Any]:
  """memjax `Discriminator` arguments of a pickled StyleGAN2 discriminator."""
  if network.class_name != "Discriminator":
    raise _fail(path, name, f"is a {network.class_name}, not a Discriminator")
  state = network.state
  if int(state.get("c_dim", 0)):
    raise _fail(path, name, f"is class-conditional (c_dim {state['c_dim']}); memjax's is not")
  modules = dict(network.modules())
  epilogue = network.child("b4")
  if epilogue is None:
    raise _fail(path, name, "lacks its 4x4 epilogue b4")
  blocks = [m for key, m in modules.items() if key.startswith("b") and "." not in key]
  architecture = _one({b.state.get("architecture") for b in blocks}, path, name, "architectures")
  if architecture != "resnet":
    raise _fail(path, name, f"has the {architecture!r} architecture; memjax's is 'resnet'")
  clamps = {m.state.get("conv_clamp") for key, m in modules.items()
            if key.rsplit(".", 1)[-1] in ("fromrgb", "conv0", "conv1", "conv")}
  conv_clamp = _one(clamps, path, name, "conv clamps")
  mbstd = epilogue.child("mbstd")
  group_size = 4 if mbstd is None else mbstd.state.get("group_size")
  if group_size is None:
    raise _fail(path, name, "takes the minibatch standard deviation over the whole batch "
                "(mbstd_group_size None); memjax's needs a group size")
  return dict(img_resolution=int(state["img_resolution"]),
              img_channels=int(state["img_channels"]),
              conv_clamp=None if conv_clamp is None else float(conv_clamp),
              mbstd_group_size=int(group_size),
              mbstd_num_channels=0 if mbstd is None else int(mbstd.state.get("num_channels", 1)),
              **_channels(network.init_kwargs))


def load_nvlabs_pickle(path: str | pathlib.Path, *, networks: Iterable[str] = _NETWORKS,
                       dtype=jnp.float32) -> Snapshot:
  """memjax models of the StyleGAN2 networks (`networks`: of 'G', 'D', 'G_ema') in a pickle.

  Every model is built with the pickled network's architecture and loaded with its weights;
  `dtype` is the models' compute dtype. A network asked for that the pickle lacks, or that memjax
  does not implement, is an error naming the file.
  """
  path = pathlib.Path(path)
  contents = read_nvlabs_pickle(path)
  built: dict[str, Any] = {}
  kwargs = {}
  for name in networks:
    if name not in _NETWORKS:
      raise ValueError(f"networks must be of {_NETWORKS}, not {name!r}")
    network = contents.get(name)
    if not isinstance(network, PersistentObject):
      raise ValueError(f"{path}: holds no network {name!r} (it holds "
                       f"{sorted(k for k, v in contents.items() if v is not None)})")
    try:
      kwargs[name] = network.init_kwargs
      state = network.state_dict()
      if name == "D":
        arguments = discriminator_arguments(network, path, name)
        model = nnx.eval_shape(lambda a=arguments: stylegan2.Discriminator(
            **a, dtype=dtype, rngs=nnx.Rngs(0)))
      else:
        arguments = generator_arguments(network, path, name)
        model = nnx.eval_shape(lambda a=arguments: stylegan2.Generator(
            **a, dtype=dtype, rngs=nnx.Rngs(0)))
      # The model's shapes only (no random weights drawn): every variable is the pickle's.
      model.load_torch_state_dict(state)
    except (KeyError, TypeError, AttributeError, IndexError, OverflowError) as error:
      raise _fail(path, name, "lacks what memjax reads from a StyleGAN2 network "
                  f"({_one_line(error)})") from None
    except ValueError as error:
      if str(error).startswith(str(path)):
        raise
      raise _fail(path, name, str(error)) from None
    built[name] = model
  return Snapshot(path=path, G=built.get("G"), D=built.get("D"), G_ema=built.get("G_ema"),
                  training_set_kwargs=_plain(contents.get("training_set_kwargs") or {}),
                  init_kwargs=kwargs)


def seed_latents(seeds: Iterable[int], z_dim: int) -> np.ndarray:
  """(N, z_dim) float32: each seed's z as NVlabs' gen_images.py draws it."""
  return np.concatenate([np.random.RandomState(int(seed)).randn(1, z_dim)
                         for seed in seeds]).astype(np.float32)


def generate_images(generator: stylegan2.Generator, seeds: Iterable[int], *,
                    truncation_psi: float = 1.0, noise_mode: str = "const",
                    batch_size: int = 32) -> np.ndarray:
  """uint8 images (N, H, W, C) of `seeds`, as NVlabs' gen_images.py writes them.

  z from `seed_latents`; pixels (x * 127.5 + 128) clamped to [0, 255] and truncated to uint8.
  With noise_mode "random" the noise comes from each chunk's seeds through JAX (not torch's).
  """
  seeds = [int(s) for s in seeds]
  run = _generator_program(float(truncation_psi), noise_mode)
  chunks = []
  for start in range(0, len(seeds), batch_size):
    chunk = seeds[start:start + batch_size]
    z = seed_latents(chunk, generator.z_dim)
    images = np.asarray(run(generator, jnp.asarray(z), jax.random.key(chunk[0])))
    chunks.append(np.clip(images * 127.5 + 128, 0, 255).astype(np.uint8))
  if not chunks:
    return np.zeros((0, generator.img_resolution, generator.img_resolution,
                     generator.img_channels), np.uint8)
  return np.concatenate(chunks)


@functools.lru_cache(maxsize=8)
def _generator_program(truncation_psi: float, noise_mode: str):
  """generator(z, key) compiled once per truncation and noise mode (and shapes)."""

  @nnx.jit
  def run(generator, z, key):
    return generator(z, key, truncation_psi=truncation_psi, noise_mode=noise_mode)

  return run
