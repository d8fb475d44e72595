r"""StyleGAN2 on the Kermany chest x-rays (pneumonia), 256x256, one channel.

  python launch.py --config=configs/cxr_stylegan2.py --workdir=runs/cxr_stylegan2
  python launch.py --config=configs/cxr_stylegan2.py --workdir=runs/cxr_stylegan2 \
      --config.workflow=sample

What the authors ran (Akbar, Wang & Eklund, MLST 2025; their README): NVlabs' StyleGAN3,
`train.py --cfg=stylegan3-t --gpus=4 --batch=32 --gamma=5 --mirror=1` (ADA and 25,000 kimg by
default; the paper quotes gamma 8 for BraTS 2020 and 10 for BraTS 2021), sampled with
`gen_images.py --trunc=1 --network=network-snapshot-025000.pkl`.

What this runs: StyleGAN2, which memjax implements, not StyleGAN3-t. It is the authors' command
with `--cfg=stylegan2` in the same NVlabs train.py: batch 32, R1 gamma 5, x-flips of the training
images, ADA toward 0.6, 25,000 kimg (`train_kimg`; `num_train_steps` = kimg x 1000 / batch,
rounded up: 781,250), samples at truncation 1 with constant noise; and what `--cfg=stylegan2`
sets: 8 mapping layers, channel_base 32768 and at most 512 channels (the authors' discriminator
is StyleGAN2's in both configs: this one), G and D learning rates 0.002 with Adam (0, 0.99), style
mixing 0.9, path length (weight 2, every 4 steps), lazy R1 every 16 steps, an EMA half-life of
batch x 10 / 32 = 10 kimg with ramp-up 0.05, minibatch standard deviation groups of 4. Each value
is set in `paper_stylegan2`, not inherited, and pinned by tests/test_stylegan2_configs.py.

Still different from NVlabs' StyleGAN2: every layer computes in `model.dtype` (NVlabs: float16 at
the 4 highest resolutions); the path-length gradient also flows through the convolution weights
(NVlabs' stylegan2 config skips that for speed); w_avg decays by 0.995 (stylegan3's is 0.998;
at truncation 1 no image changes).

A shorter run: --config.train_kimg=5000 (the step count follows, and with --config.batch_size the
EMA too). The authors sampled 100,001 images (seeds 2-100002): --config.num_samples=100001. A
StyleGAN2 trained with NVlabs' code (network-snapshot-*.pkl) loads with
memjax.models.nvlabs_pickle.load_nvlabs_pickle.

Prepare the data first (tools/prepare_data.py --dataset=cxr_pneumonia/256 --manual_dir=KERMANY).
"""

import ml_collections

from configs import default

# The authors' README: --gamma=5 (for the x-rays; the paper's BraTS runs used 8 and 10).
CXR_R1_GAMMA = 5.0


def paper_stylegan2(config: ml_collections.ConfigDict, r1_gamma: float
                    ) -> ml_collections.ConfigDict:
  """The authors' GAN run as StyleGAN2: NVlabs stylegan3's `train.py --cfg=stylegan2 --gpus=4
  --batch=32 --gamma=R1_GAMMA --mirror=1` (--kimg 25000, --aug ada by default), 256x256 images."""
  config = default.stylegan2(config)
  config.workflow = "train"
  config.batch_size = 32
  # Training length in thousands of real images, as NVlabs counts it (--kimg); the step count
  # follows it and the batch size, also when either is overridden on the command line.
  config.train_kimg = 25_000
  kimg, batch = config.get_ref("train_kimg"), config.get_ref("batch_size")
  config.num_train_steps = (kimg * 1000 + batch - 1) // batch

  model = config.model
  model.z_dim = model.w_dim = 512
  model.map_layers = 8  # --cfg=stylegan2's --map-depth
  model.mapping_lr_multiplier = 0.01
  model.channel_base = 32768  # --cbase
  model.channel_max = 512  # --cmax
  model.conv_clamp = 256.0
  model.mbstd_group_size = 4  # --mbstd-group

  loss = config.loss
  loss.r1_gamma = float(r1_gamma)  # --gamma
  loss.r1_interval = 16
  loss.pl_weight = 2.0
  loss.pl_interval = 4
  loss.pl_batch_shrink = 2
  loss.pl_decay = 0.01
  loss.style_mixing_prob = 0.9

  optimizer = config.optimizer
  optimizer.learning_rate = 0.002  # --glr, 0.002 for --cfg=stylegan2
  optimizer.d_learning_rate = 0.002  # --dlr
  optimizer.b1, optimizer.b2, optimizer.eps = 0.0, 0.99, 1e-8
  config.ema_kimg = batch.to_float() * 10 / 32  # NVlabs: batch x 10 / 32 kimg, 10 at batch 32
  config.ema_rampup = 0.05

  config.ada.augment = "ada"  # --aug=ada
  config.ada.initial_p = 0.0
  config.ada.target = 0.6  # --target
  config.ada.interval = 4
  config.ada.kimg = 500.0
  config.data.mirror = True  # --mirror=1

  config.sample.truncation_psi = 1.0  # gen_images.py --trunc=1
  config.sample.noise_mode = "const"  # gen_images.py's default --noise-mode

  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.sample_every_steps = 10_000
  config.num_samples = 1000
  config.sample_batch_size = 64
  return config


def get_config() -> ml_collections.ConfigDict:
  config = paper_stylegan2(default.get_config(), r1_gamma=CXR_R1_GAMMA)
  config.data.source = "tfds:cxr_pneumonia/256:train"
  return config
