"""The paper's StyleGAN2 configs against the authors' command, resolved as NVlabs' train.py does.

`nvlabs_stylegan2_options` transcribes how NVlabs stylegan3's train.py (and the defaults of its
training_loop.py and loss.py) turns `--cfg=stylegan2 --gpus=4 --batch=32 --gamma=G --mirror=1`
into training options: the authors' StyleGAN3-t command with StyleGAN2 in its place. Every
memjax key of the paper configs must equal the option it stands for.
"""

import json

import pytest

from configs import brats20_stylegan2
from configs import brats21_stylegan2
from configs import cxr_stylegan2
from configs import default
from memjax.train import stylegan2


def nvlabs_stylegan2_options(gamma: float, batch: int = 32, kimg: int = 25000) -> dict:
  """train.py's options for --cfg=stylegan2 --batch=BATCH --gamma=GAMMA --mirror=1 (--kimg)."""
  cfg = "stylegan2"
  return {
      "batch_size": batch,
      "total_kimg": kimg,  # --kimg, default 25000
      "z_dim": 512, "w_dim": 512,  # c.G_kwargs
      "map": 8 if cfg == "stylegan2" else 2,  # --map-depth default
      "mapping_lr_multiplier": 0.01,  # MappingNetwork's default
      "cbase": 32768, "cmax": 512,  # --cbase, --cmax defaults
      "conv_clamp": 256,  # SynthesisBlock's and Discriminator's default
      "mbstd_group": 4,  # --mbstd-group default
      "r1_gamma": gamma,
      "D_reg_interval": 16,  # training_loop default
      "pl_weight": 2, "G_reg_interval": 4, "style_mixing_prob": 0.9,  # cfg == 'stylegan2'
      "pl_batch_shrink": 2, "pl_decay": 0.01,  # StyleGAN2Loss defaults
      "glr": 0.002 if cfg == "stylegan2" else 0.0025, "dlr": 0.002,  # --glr, --dlr
      "betas": (0, 0.99), "eps": 1e-8,
      "ema_kimg": batch * 10 / 32, "ema_rampup": 0.05,
      "aug": "ada", "ada_target": 0.6, "augment_p": 0, "ada_interval": 4, "ada_kimg": 500,
      "xflip": True,  # --mirror=1
      "truncation_psi": 1, "noise_mode": "const",  # gen_images.py --trunc=1, --noise-mode default
  }


def memjax_values(config) -> dict:
  """The paper config's value for each option of `nvlabs_stylegan2_options`."""
  m, loss, opt, ada = config.model, config.loss, config.optimizer, config.ada
  return {
      "batch_size": config.batch_size, "total_kimg": config.train_kimg,
      "z_dim": m.z_dim, "w_dim": m.w_dim, "map": m.map_layers,
      "mapping_lr_multiplier": m.mapping_lr_multiplier, "cbase": m.channel_base,
      "cmax": m.channel_max, "conv_clamp": m.conv_clamp, "mbstd_group": m.mbstd_group_size,
      "r1_gamma": loss.r1_gamma, "D_reg_interval": loss.r1_interval,
      "pl_weight": loss.pl_weight, "G_reg_interval": loss.pl_interval,
      "style_mixing_prob": loss.style_mixing_prob, "pl_batch_shrink": loss.pl_batch_shrink,
      "pl_decay": loss.pl_decay, "glr": opt.learning_rate, "dlr": opt.d_learning_rate,
      "betas": (opt.b1, opt.b2), "eps": opt.eps, "ema_kimg": config.ema_kimg,
      "ema_rampup": config.ema_rampup, "aug": ada.augment, "ada_target": ada.target,
      "augment_p": ada.initial_p, "ada_interval": ada.interval, "ada_kimg": ada.kimg,
      "xflip": config.data.mirror, "truncation_psi": config.sample.truncation_psi,
      "noise_mode": config.sample.noise_mode,
  }


def assert_same_options(got: dict, want: dict) -> None:
  assert got.keys() == want.keys()
  for name, value in want.items():
    if isinstance(value, (str, bool)):
      assert got[name] == value and type(got[name]) is type(value), name
    else:
      assert got[name] == pytest.approx(value, rel=1e-12), name


@pytest.mark.parametrize("module,gamma,source", [
    (cxr_stylegan2, 5.0, "tfds:cxr_pneumonia/256:train"),  # the authors' README: --gamma=5
    (brats20_stylegan2, 8.0, "tfds:brats2020/slices:train"),  # the paper's gamma for BraTS 2020
    (brats21_stylegan2, 10.0, "tfds:brats2021/slices:train"),  # and for BraTS 2021
])
def test_paper_configs_are_the_authors_command_with_stylegan2(module, gamma, source):
  config = module.get_config()
  assert config.workflow == "train" and config.model.name == "stylegan2"
  assert config.data.source == source
  assert_same_options(memjax_values(config), nvlabs_stylegan2_options(gamma))
  # 25,000 kimg of batches of 32: NVlabs trains until 25,000,000 images have been shown.
  assert config.num_train_steps == 781_250
  resolved = json.loads(config.to_json())  # As the work dir's config.json stores it.
  assert resolved["num_train_steps"] == 781_250 and resolved["ema_kimg"] == 10.0
  settings = stylegan2._Settings(config)  # The trainer reads every key it needs.
  assert (settings.r1_gamma, settings.mirror, settings.augment) == (gamma, True, "ada")
  doc = module.__doc__
  for statement in ("--cfg=stylegan3-t", "--gpus=4", "--batch=32", f"--gamma={gamma:g}",
                    "--mirror=1", "--trunc=1", "network-snapshot-025000.pkl", "StyleGAN2"):
    assert statement in doc, statement


@pytest.mark.parametrize("kimg,batch", [(100, 32), (100, 64), (1, 24)])
def test_train_kimg_sets_the_steps_and_the_ema_follows_the_batch(kimg, batch):
  """As overridden on the command line: NVlabs stops once kimg x 1000 images have been shown."""
  config = default.override(cxr_stylegan2.get_config(), {"train_kimg": kimg,
                                                          "batch_size": batch})
  steps = config.num_train_steps
  assert (steps - 1) * batch < kimg * 1000 <= steps * batch
  assert config.ema_kimg == pytest.approx(nvlabs_stylegan2_options(5.0, batch)["ema_kimg"])
  assert_same_options(memjax_values(config), nvlabs_stylegan2_options(5.0, batch, kimg))
  # A step count given outright wins over the kimg.
  assert default.override(config, {"num_train_steps": 7}).num_train_steps == 7
