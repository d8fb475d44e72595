"""Loading NVlabs network pickles (`network-snapshot-*.pkl`) without NVlabs' code or torch.

Three sources of pickles:
  * written here with torch, in the layout NVlabs' training loop writes: every module pickles as
    `torch_utils.persistence._reconstruct_persistent_obj(meta)` (its class name, source, state
    and init kwargs), every tensor through torch's own pickling. The weights and the reference's
    outputs are tests/data/stylegan2_reference.npz (NVlabs' stylegan2-ada-pytorch, see
    tools/make_stylegan2_reference.py), so the loaded networks must reproduce NVlabs' images;
  * tests/fixtures/nvlabs_stylegan2_tiny.pkl, written by NVlabs' own code
    (tools/make_nvlabs_pickle_fixture.py), with the reference's images beside it; sampled by
    tools/sample_nvlabs_pickle.py in a process where torch cannot be imported;
  * hand-made pickles of what must be refused: other globals, other networks, other files.
"""

import os
import pathlib
import pickle
import re
import subprocess
import sys
import types
import zipfile

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.models import nvlabs_pickle

DATA = pathlib.Path(__file__).parent / "data" / "stylegan2_reference.npz"
FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "nvlabs_stylegan2_tiny.pkl"
TOOLS = pathlib.Path(__file__).parent.parent / "tools"
SOURCE = "# the source code of training/networks.py would be here\n"
BUFFERS = ("w_avg", "noise_const", "resample_filter")


@pytest.fixture
def persistence(monkeypatch):
  """`torch_utils.persistence` and `dnnlib.util` stand-ins, installed under NVlabs' names so
  that pickling writes the globals NVlabs' code writes; the loader must never call them."""

  def _reconstruct_persistent_obj(meta):
    raise AssertionError("the loader ran NVlabs' reconstruction")

  _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
  _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
  module = types.ModuleType("torch_utils.persistence")
  module._reconstruct_persistent_obj = _reconstruct_persistent_obj
  util = types.ModuleType("dnnlib.util")
  util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
  for name, value in (("torch_utils", types.ModuleType("torch_utils")),
                      ("torch_utils.persistence", module), ("dnnlib", types.ModuleType("dnnlib")),
                      ("dnnlib.util", util)):
    monkeypatch.setitem(sys.modules, name, value)
  return module, util


def persistent_meta(persistence_module, class_name, state):
  """What `persistent_class`'s `__reduce__` returns for an object of `class_name`."""
  meta = dict(type="class", version=6, module_src=SOURCE, class_name=class_name, state=state)
  return persistence_module._reconstruct_persistent_obj, (meta,)


# ----------------------------------------------------------------------------------------------
# A snapshot written with torch.

# NVlabs' class of each module, by the last part of its name.
G_CLASSES = {"": "Generator", "mapping": "MappingNetwork", "synthesis": "SynthesisNetwork",
             "conv0": "SynthesisLayer", "conv1": "SynthesisLayer", "torgb": "ToRGBLayer",
             "affine": "FullyConnectedLayer"}
D_CLASSES = {"": "Discriminator", "fromrgb": "Conv2dLayer", "conv0": "Conv2dLayer",
             "conv1": "Conv2dLayer", "skip": "Conv2dLayer", "conv": "Conv2dLayer",
             "fc": "FullyConnectedLayer", "out": "FullyConnectedLayer",
             "mbstd": "MinibatchStdLayer"}


def torch_snapshot(torch, persistence_module, easydict, reference):
  """{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} as torch modules that pickle as
  NVlabs' persistent objects do, with the reference's weights (G's halved: G_ema is not G)."""

  class Persistent(torch.nn.Module):
    class_name = "Module"

    def __reduce__(self):  # persistence.persistent_class's Decorator.__reduce__
      fields = list(super().__reduce__())
      fields += [None] * max(3 - len(fields), 0)
      return persistent_meta(persistence_module, self.class_name, fields[2])

  def module(class_name, attributes, init_kwargs=None):
    instance = type(class_name, (Persistent,), {"class_name": class_name})()
    instance.__dict__.update(attributes)
    instance._init_args, instance._init_kwargs = (), dict(init_kwargs or {})
    return instance

  r = {k: (int(v) if v.ndim == 0 and k not in ("truncation_psi",) else v)
       for k, v in reference.items()}
  gain = np.float64(np.sqrt(2))  # NVlabs stores numpy scalars for some gains.

  def attributes(kind, name):
    leaf = name.rsplit(".", 1)[-1]
    if kind == "G":
      if name == "":
        return dict(z_dim=r["z_dim"], c_dim=0, w_dim=r["w_dim"], img_resolution=r["img_resolution"],
                    img_channels=r["img_channels"], num_ws=r["num_ws"])
      if name == "mapping":
        return dict(z_dim=r["z_dim"], c_dim=0, w_dim=r["w_dim"], num_ws=r["num_ws"],
                    num_layers=r["num_mapping_layers"], w_avg_beta=0.995)
      if name.startswith("mapping.fc"):
        return dict(activation="lrelu", weight_gain=np.float64(0.01 / np.sqrt(r["w_dim"])),
                    bias_gain=0.01)
      if leaf == "affine":
        return dict(activation="linear", weight_gain=np.float64(1 / np.sqrt(r["w_dim"])),
                    bias_gain=1)
      if leaf in ("conv0", "conv1"):
        return dict(up=2 if leaf == "conv0" else 1, use_noise=True, activation="lrelu",
                    conv_clamp=r["conv_clamp"], padding=1, act_gain=gain)
      if leaf == "torgb":
        return dict(conv_clamp=r["conv_clamp"])
      if name.startswith("synthesis.b"):
        return dict(architecture="skip", use_fp16=False, channels_last=False,
                    resolution=int(leaf[1:]))
      return dict(img_resolution=r["img_resolution"], img_channels=r["img_channels"])
    if name == "":
      return dict(c_dim=0, img_resolution=r["img_resolution"], img_channels=r["img_channels"])
    if leaf in ("fromrgb", "conv0", "conv1", "conv", "skip"):
      return dict(activation="linear" if leaf == "skip" else "lrelu", act_gain=gain,
                  conv_clamp=None if leaf == "skip" else r["conv_clamp"])
    if leaf in ("fc", "out"):
      return dict(activation="lrelu" if leaf == "fc" else "linear", bias_gain=1)
    if leaf == "mbstd":
      return dict(group_size=r["mbstd_group_size"], num_channels=1)
    return dict(architecture="resnet", use_fp16=False, resolution=int(leaf[1:]))

  def network(kind, init_kwargs, scale=1.0):
    classes = G_CLASSES if kind == "G" else D_CLASSES
    tree = {}
    prefix = kind + "."
    names = [k[len(prefix):] for k in reference if k.startswith(prefix)]
    if kind == "D":
      names.append("b4.mbstd.")  # The minibatch-std layer has no tensors.
    for name in names:
      *path, leaf = name.split(".")
      for depth in range(len(path) + 1):
        owner = ".".join(path[:depth])
        if owner not in tree:
          last = owner.rsplit(".", 1)[-1]
          class_name = classes.get(last) or (
              "FullyConnectedLayer" if last.startswith("fc") else
              "SynthesisBlock" if kind == "G" else
              "DiscriminatorEpilogue" if last == "b4" else "DiscriminatorBlock")
          tree[owner] = module(class_name, attributes(kind, owner),
                               init_kwargs if owner == "" else None)
          if depth:
            parent = ".".join(path[:depth - 1])
            tree[parent].add_module(path[depth - 1], tree[owner])
      if leaf:
        value = torch.from_numpy(np.array(reference[prefix + name]))
        if leaf in BUFFERS:
          tree[".".join(path)].register_buffer(leaf, value)
        else:
          tree[".".join(path)].register_parameter(
              leaf, torch.nn.Parameter(value * scale, requires_grad=False))
    return tree[""]

  g_kwargs = dict(z_dim=r["z_dim"], c_dim=0, w_dim=r["w_dim"], img_resolution=r["img_resolution"],
                  img_channels=r["img_channels"],
                  mapping_kwargs=easydict(num_layers=r["num_mapping_layers"]),
                  synthesis_kwargs=easydict(channel_base=r["channel_base"],
                                            channel_max=r["channel_max"], num_fp16_res=4,
                                            conv_clamp=r["conv_clamp"]))
  d_kwargs = dict(c_dim=0, img_resolution=r["img_resolution"], img_channels=r["img_channels"],
                  architecture="resnet", channel_base=r["channel_base"],
                  channel_max=r["channel_max"], num_fp16_res=4, conv_clamp=r["conv_clamp"],
                  epilogue_kwargs=easydict(mbstd_group_size=r["mbstd_group_size"]))
  augment_pipe = module("AugmentPipe", dict(xflip=1.0, rotate90=1.0, xint=1.0, xint_max=0.125))
  augment_pipe.register_buffer("p", torch.tensor(0.25))
  augment_pipe.register_buffer("Hz_geom", torch.arange(12.0).reshape(3, 4)[:, ::2])  # Strided.
  return dict(G=network("G", g_kwargs, scale=0.5), D=network("D", d_kwargs),
              G_ema=network("G", g_kwargs), augment_pipe=augment_pipe,
              training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                       path="/data/cxr-256.zip", use_labels=False,
                                       max_size=5216, xflip=True, resolution=16))


@pytest.fixture(scope="module")
def reference():
  with np.load(DATA) as stored:
    return dict(stored)


def test_a_snapshot_written_with_torch_gives_the_references_images(tmp_path, persistence,
                                                                   reference):
  torch = pytest.importorskip("torch")
  persistence_module, util = persistence
  snapshot = torch_snapshot(torch, persistence_module, util.EasyDict, reference)
  paths = {}
  for protocol in (2, 4):  # Python 3.7's torch wrote 3; protocol 2 pickles bytes as text.
    paths[protocol] = tmp_path / f"network-snapshot-{protocol:06d}.pkl"
    with open(paths[protocol], "wb") as f:
      pickle.dump(snapshot, f, protocol=protocol)
  del sys.modules["torch_utils.persistence"]  # Loading needs no NVlabs module.

  contents = {p: nvlabs_pickle.read_nvlabs_pickle(path) for p, path in paths.items()}
  for name in ("G", "D", "G_ema"):
    states = [contents[p][name].state_dict() for p in (2, 4)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
      np.testing.assert_array_equal(states[0][key], states[1][key])
  pipe = contents[4]["augment_pipe"]
  assert pipe.class_name == "AugmentPipe" and pipe.source_length == len(SOURCE)
  np.testing.assert_array_equal(pipe.state_dict()["Hz_geom"], [[0, 2], [4, 6], [8, 10]])

  loaded = nvlabs_pickle.load_nvlabs_pickle(paths[4])
  assert loaded.training_set_kwargs["max_size"] == 5216
  assert loaded.init_kwargs["G"]["synthesis_kwargs"]["channel_base"] == int(
      reference["channel_base"])
  psi = float(reference["truncation_psi"])

  @nnx.jit
  def run(generator, discriminator, z, x_real):
    return (generator(z, noise_mode="const"),
            generator(z, truncation_psi=psi, noise_mode="const"),
            discriminator(jnp.transpose(x_real, (0, 2, 3, 1))))

  img, img_trunc, d_real = (np.asarray(x) for x in run(
      loaded.G_ema, loaded.D, jnp.asarray(reference["z"]), jnp.asarray(reference["x_real"])))
  np.testing.assert_allclose(img.transpose(0, 3, 1, 2), reference["img"], atol=2e-5, rtol=0)
  np.testing.assert_allclose(img_trunc.transpose(0, 3, 1, 2), reference["img_trunc"], atol=2e-5,
                             rtol=0)
  np.testing.assert_allclose(d_real, reference["d_real"][:, 0], atol=2e-5, rtol=0)
  assert np.abs(reference["img"]).max() > 1
  # G is its own network (the halved weights), not G_ema's.
  np.testing.assert_array_equal(np.asarray(loaded.G.synthesis.b8.conv0.weight[...]),
                                reference["G.synthesis.b8.conv0.weight"] * 0.5)


# ----------------------------------------------------------------------------------------------
# NVlabs' own pickle, without torch.

def test_nvlabs_own_pickle_gives_the_references_images():
  """The fixture was pickled by NVlabs' stylegan2-ada-pytorch; its outputs were computed there."""
  assert FIXTURE.stat().st_size < 20_000
  expected = np.load(FIXTURE.with_suffix(".npz"))
  snapshot = nvlabs_pickle.load_nvlabs_pickle(FIXTURE, networks=["G_ema"])
  assert snapshot.G is None and snapshot.D is None
  assert snapshot.training_set_kwargs["path"] == "tiny.zip"
  program = nvlabs_pickle._generator_program(1.0, "const")  # generate_images' own program
  img = np.asarray(program(snapshot.G_ema, jnp.asarray(expected["z"]), jax.random.key(0)))
  np.testing.assert_allclose(img.transpose(0, 3, 1, 2), expected["img"], atol=1e-5, rtol=0)
  assert np.abs(expected["img"]).max() > 0.5


def test_the_sampling_tool_renders_generate_pys_images_without_torch(tmp_path):
  """tools/sample_nvlabs_pickle.py in a process where `import torch` fails: each seed's uint8
  image is the one NVlabs' generate.py wrote for it (z from RandomState(seed), truncation 1)."""
  script = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
  result = subprocess.run(
      [sys.executable, "-c", script, str(TOOLS / "sample_nvlabs_pickle.py"),
       f"--network={FIXTURE}", "--seeds=2-3,4-5", f"--out={tmp_path}", "--chunk=3"],
      capture_output=True, text=True, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-2000:]
  files = sorted(tmp_path.glob("*.npz"))
  assert [f.name for f in files] == ["seeds_000002-000004.npz", "seeds_000005-000005.npz"]
  images = np.concatenate([np.load(f)["images"] for f in files])
  expected = np.load(FIXTURE.with_suffix(".npz"))
  np.testing.assert_array_equal(np.concatenate([np.load(f)["seeds"] for f in files]),
                                expected["seeds"])
  assert images.dtype == np.uint8 and images.shape == expected["seed_images"].shape
  # The same pixels; a float32 rounding at a .5 boundary may move one by 1.
  assert np.abs(images.astype(int) - expected["seed_images"]).max() <= 1
  assert images.std() > 0


# ----------------------------------------------------------------------------------------------
# What is refused, naming the file.


class _Call:
  """Pickles as a call of `function` with `args` (what a malicious pickle would hold)."""

  def __init__(self, function, *args):
    self.function, self.args = function, args

  def __reduce__(self):
    return self.function, self.args


def test_other_globals_are_refused_and_never_called(tmp_path):
  marker = tmp_path / "ran"
  path = tmp_path / "network-snapshot-000000.pkl"
  path.write_bytes(pickle.dumps({"G": _Call(os.system, f"touch {marker}")}))
  with pytest.raises(ValueError, match=rf"{re.escape(path.name)}.*(posix|os)\.system.*not allow"):
    nvlabs_pickle.read_nvlabs_pickle(path)
  assert not marker.exists()
  path.write_bytes(pickle.dumps({"G": _Call(eval, "1 + 1")}))
  with pytest.raises(ValueError, match=r"builtins\.eval"):
    nvlabs_pickle.read_nvlabs_pickle(path)


def test_other_files_are_refused_naming_the_file(tmp_path):
  archive = tmp_path / "model.pt"
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("archive/data.pkl", b"\x80\x02}.")
  with pytest.raises(ValueError, match=r"model\.pt: a torch\.save archive"):
    nvlabs_pickle.read_nvlabs_pickle(archive)
  text = tmp_path / "notes.pkl"
  text.write_text("not a pickle")
  with pytest.raises(ValueError, match=r"notes\.pkl: not a pickle"):
    nvlabs_pickle.read_nvlabs_pickle(text)
  truncated = tmp_path / "network-snapshot-truncated.pkl"
  truncated.write_bytes(FIXTURE.read_bytes()[:9000])
  with pytest.raises(ValueError, match=r"network-snapshot-truncated\.pkl: .*(damaged|truncated)"):
    nvlabs_pickle.read_nvlabs_pickle(truncated)
  plain = tmp_path / "plain.pkl"
  plain.write_bytes(pickle.dumps({"weights": [1, 2]}))
  with pytest.raises(ValueError, match=r"plain\.pkl: .*no 'G', 'D' or 'G_ema'"):
    nvlabs_pickle.read_nvlabs_pickle(plain)
  with pytest.raises(FileNotFoundError, match="missing.pkl"):
    nvlabs_pickle.read_nvlabs_pickle(tmp_path / "missing.pkl")
  with pytest.raises(ValueError, match=r"nvlabs_stylegan2_tiny\.pkl: holds no network 'D'"):
    nvlabs_pickle.load_nvlabs_pickle(FIXTURE, networks=["D"])


class _Persistent:
  """A persistent object of `class_name`, pickled as NVlabs' persistence pickles one."""

  def __init__(self, persistence_module, class_name, modules=None, **attributes):
    self.reduce = persistent_meta(persistence_module, class_name, dict(
        _parameters={}, _buffers={}, _modules=modules or {}, _init_kwargs={}, **attributes))

  def __reduce__(self):
    return self.reduce


def test_networks_memjax_does_not_implement_are_refused(tmp_path, persistence):
  module, _ = persistence
  mapping = _Persistent(module, "MappingNetwork", num_layers=2, w_avg_beta=0.998)
  stylegan3 = _Persistent(module, "Generator", dict(mapping=mapping, synthesis=_Persistent(
      module, "SynthesisNetwork", {"input": _Persistent(module, "SynthesisInput"),
                                   "L0_36_512": _Persistent(module, "SynthesisLayer")})),
                          c_dim=0)
  conditional = _Persistent(module, "Generator", dict(mapping=mapping, synthesis=_Persistent(
      module, "SynthesisNetwork", {"b4": _Persistent(module, "SynthesisBlock")})), c_dim=10)
  for name, network, message in (("stylegan3-t", stylegan3, "StyleGAN3 synthesis"),
                                 ("conditional", conditional, "class-conditional")):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(pickle.dumps({"G_ema": network, "G": None, "D": None}))
    with pytest.raises(ValueError, match=rf"{name}\.pkl: G_ema .*{message}"):
      nvlabs_pickle.load_nvlabs_pickle(path, networks=["G_ema"])
