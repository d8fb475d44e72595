"""The NVlabs pickle loader against crafted files of a few hundred bytes (issue 25, items 11-13).

Each file is assembled opcode by opcode here and loaded in a subprocess whose address space is
capped (RLIMIT_AS: what it had after its imports plus 768 MiB), so that a crash (SIGSEGV) or an
allocation the file does not pay for shows as itself, not as a sick test run. Every file must give
one ValueError of one line naming the file, leave the folder as it was, and raise the peak RSS by
less than 150 MB.
"""

import json
import pathlib
import pickle
import struct
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "tools" / "sample_nvlabs_pickle.py"


def glob(module, name):
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def value(obj):
  """`obj` (plain values only) as opcodes, without the protocol header and STOP."""
  return pickle.dumps(obj, protocol=3)[2:-1]


def snapshot(init_kwargs=b"}", buffers=b"}"):
  """A file {'G_ema': <persistent Generator>} whose `_init_kwargs` and `_buffers` are the given
  opcodes (each pushing one dict)."""
  state = (b"}(" + value("_init_kwargs") + init_kwargs + value("_buffers") + buffers
           + value("_modules") + b"}" + b"u")
  meta = (b"}(" + value("type") + value("class") + value("class_name") + value("Generator")
          + value("state") + state + b"u")
  persistent = glob("torch_utils.persistence", "_reconstruct_persistent_obj") + b"(" + meta + b"tR"
  return b"\x80\x03}" + value("G_ema") + persistent + b"s."


def dtype(spec, state):
  return glob("numpy", "dtype") + value((spec, False, True)) + b"R" + state + b"b"


F8 = dtype("f8", value((3, "<", None, None, None, -1, -1, 0)))


def structured_state(offset, size):
  """A dtype state with one field `a` (float64, or `size` raw bytes) at `offset` of 8 bytes."""
  field = F8 if size is None else dtype(f"V{size}", value((3, "|", None, None, None, size, 1, 0)))
  return (b"(" + value(3) + value("|") + value(None) + value(("a",)) + b"}" + value("a") + b"("
          + field + value(offset) + b"ts" + value(8) + value(1) + value(16) + b"t")


def scalar(dtype_opcodes, data):
  return (glob("numpy._core.multiarray", "scalar") + b"(" + dtype_opcodes + value(data) + b"tR")


def kwargs(item):
  return b"}" + value("x") + item + b"s"


def storage(numel):
  """torch.storage._load_from_bytes of a float32 storage of `numel` elements (all written)."""
  pid = (b"(" + value("storage") + glob("torch", "FloatStorage") + value("0") + value("cpu")
         + value(numel) + value(None) + b"t")
  stream = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"little_endian": True}, protocol=2) + b"\x80\x02" + pid + b"Q."
            + pickle.dumps(["0"], protocol=2) + struct.pack("<q", numel) + b"\0" * (4 * numel))
  return glob("torch.storage", "_load_from_bytes") + b"(" + value(stream) + b"tR"


def tensor(size, stride, numel=1):
  return (glob("torch._utils", "_rebuild_tensor_v2") + b"(" + storage(numel) + value(0)
          + value(size) + value(stride) + value(False) + b")tR")


def deep_list(depth):
  return b"]" * depth + b"a" * (depth - 1)


def doubling(depth):
  """[x, x] nested `depth` times through the memo: 2^depth values in a few hundred bytes."""
  out = b"]q\x00"
  for _ in range(depth):
    out += b"0(h\x00h\x00lq\x00"  # POP, MARK, GET 0, GET 0, LIST, PUT 0
  return out


HOSTILE = {
    # 11. Structured dtypes through numpy.dtype and scalar: a field past the value's 8 bytes.
    "field_at_2_30": (snapshot(kwargs(scalar(
        dtype("V8", structured_state(2**30, None)), b"\0" * 8))), "not a plain number"),
    "field_4096_bytes": (snapshot(kwargs(scalar(
        dtype("V8", structured_state(0, 4096)), b"\0" * 8))), "not a plain number"),
    "float_with_fields": (snapshot(kwargs(scalar(
        dtype("f8", structured_state(2**30, None)), b"\0" * 8))), "not a plain number"),
    "object_scalar": (snapshot(kwargs(scalar(
        dtype("O", value((3, "|", None, None, None, -1, -1, 63))), b"\0" * 8))),
                      "not a plain number"),
    "short_scalar": (snapshot(kwargs(scalar(F8, b"\0" * 3))), "scalar of 3 bytes"),
    # 12. A stride-0 view of a one-element storage: 2^28 float32 elements (1 GiB) copied out.
    "stride_0": (snapshot(buffers=b"}" + value("w_avg") + tensor((2**14, 2**14), (0, 0))
                          + b"s"), "broadcast view"),
    "overlapping": (snapshot(buffers=b"}" + value("w_avg") + tensor((2**14, 2**14), (1, 1), 16)
                             + b"s"), "broadcast view"),
    # 13. Errors of other types before: MemoryError, ValueError without the path, RecursionError.
    "ndarray_call": (snapshot(kwargs(glob("numpy", "ndarray") + value((2**40,)) + b"R")),
                     "numpy.ndarray"),
    "ndarray_huge_shape": (snapshot(kwargs(
        glob("numpy._core.multiarray", "_reconstruct") + b"(" + glob("numpy", "ndarray")
        + value((0,)) + value(b"b") + b"tR(" + value(1) + value((2**20, 2**20)) + F8
        + value(False) + value(b"") + b"tb")), "holding 0 bytes"),
    "bytearray8_2_40": (b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"\0" * 64 + b".",
                        "damaged or truncated"),
    "binbytes8_2_40": (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"\0" * 64 + b".",
                       "damaged or truncated"),
    "ext1": (b"\x80\x02\x82\x01.", "damaged or truncated"),
    "negative_size": (snapshot(buffers=b"}" + value("w_avg") + tensor((-2, 3), (1, 1))
                               + b"s"), "a tensor of size (-2, 3)"),
    "negative_numel": (snapshot(buffers=b"}" + value("w_avg") + tensor((1,), (1,), -5) + b"s"),
                       "storage"),
    "deep_200000": (snapshot(kwargs(deep_list(200_000))), "nested deeper than 100"),
    "doubling_60": (snapshot(kwargs(doubling(60))), "more than 1000000 values"),
}

CHILD = textwrap.dedent("""
    import json, os, resource, sys
    from memjax.models import nvlabs_pickle
    import jax, jax.numpy  # every import before the cap

    def status(key):
      for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
          return int(line.split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + (768 << 20),) * 2)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results = {}
    for path in sys.argv[1:]:
      try:
        nvlabs_pickle.load_nvlabs_pickle(path, networks=["G_ema"])
        results[path] = ["loaded", ""]
      except Exception as error:
        results[path] = [type(error).__name__, str(error)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(results=results, grew=peak - start)))
    """)


def run_child(code, args, cwd):
  return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                        text=True, timeout=120, check=False,
                        env={"PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu",
                             "PATH": "/usr/bin:/bin"})


def test_each_crafted_file_is_one_error_naming_it_within_its_bytes(tmp_path):
  folder = tmp_path / "received"
  folder.mkdir()
  paths = {}
  for name, (data, _) in HOSTILE.items():
    paths[name] = folder / f"{name}.pkl"
    paths[name].write_bytes(data)
    assert len(data) < 2048 or name == "deep_200000", name  # a few hundred bytes
  before = sorted(p.name for p in folder.iterdir())
  child = run_child(CHILD, [str(p) for p in paths.values()], tmp_path)
  assert child.returncode == 0, child.stderr[-3000:]  # no SIGSEGV, no MemoryError escaping
  report = json.loads(child.stdout.strip().splitlines()[-1])
  for name, (_, message) in HOSTILE.items():
    kind, text = report["results"][str(paths[name])]
    assert kind == "ValueError", (name, kind, text)
    assert text.startswith(f"{paths[name]}: ") and "\n" not in text, (name, text)
    assert message in text, (name, text)
  assert report["grew"] < 150 << 20, report["grew"]  # nothing near the 1 GiB the files declare
  assert sorted(p.name for p in folder.iterdir()) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["received"]


def test_the_sampling_tool_says_one_line_naming_the_file(tmp_path):
  code = textwrap.dedent(f"""
      import resource, runpy, sys
      from memjax.models import nvlabs_pickle
      import jax, jax.numpy
      vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")]
      resource.setrlimit(resource.RLIMIT_AS, (vm[0] + (768 << 20),) * 2)
      sys.argv = [{str(TOOL)!r}, "--network", sys.argv[1], "--seeds", "0-3", "--out", "samples"]
      runpy.run_path(sys.argv[0], run_name="__main__")
      """)
  for name in ("field_at_2_30", "stride_0"):  # a crash and 1 GiB before the fix
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(HOSTILE[name][0])
    child = run_child(code, [str(path)], tmp_path)
    assert child.returncode == 1, (name, child.returncode, child.stderr[-2000:])
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: "), (name, child.stderr[-2000:])
    assert HOSTILE[name][1] in lines[0]
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("numpy_value", [1.5, 7, True, 2 + 1j])
def test_plain_numpy_scalars_and_arrays_still_load(tmp_path, numpy_value):
  """What real snapshots pickle (numpy scalars of numeric dtypes, arrays) reads as before."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from memjax.models import nvlabs_pickle  # pylint: disable=import-outside-toplevel
  item = np.asarray(numpy_value)[()]
  array = np.arange(6, dtype=np.float32).reshape(2, 3)
  big_endian = np.arange(3, dtype=">i4")
  values = b"}(" + value("s") + pickle.dumps(item, protocol=3)[2:-1] + value("a") + pickle.dumps(
      array, protocol=3)[2:-1] + value("b") + pickle.dumps(big_endian, protocol=3)[2:-1] + b"u"
  path = tmp_path / "plain.pkl"
  path.write_bytes(snapshot(values))
  contents = nvlabs_pickle.read_nvlabs_pickle(path)
  read = contents["G_ema"].init_kwargs
  assert read["s"] == numpy_value and type(read["s"]) is type(item.item())
  np.testing.assert_array_equal(read["a"], array)
  assert read["a"].dtype == np.float32
  np.testing.assert_array_equal(read["b"], big_endian)
