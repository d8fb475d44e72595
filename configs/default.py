"""Defaults that every experiment config starts from (see configs/*.py)."""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.workflow = "audit"  # what runs: audit, train, sample, demo, sweep or prepare
  config.seed = 0  # the one random key of training and sampling
  # Deprecated names of config.audit.{synthetic,training,holdout}_images (one warning each).
  config.synthetic = config_dict.placeholder(str)
  config.train = config_dict.placeholder(str)
  config.holdout = config_dict.placeholder(str)

  config.audit = ml_collections.ConfigDict()
  # Images to audit: folders (PNG, JPEG, TIFF, NIfTI, npy/npz), .npy or .npz files, tfds: names.
  config.audit.synthetic_images = config_dict.placeholder(str)  # the images to audit
  config.audit.training_images = config_dict.placeholder(str)  # what the generator trained on
  config.audit.holdout_images = config_dict.placeholder(str)  # real, never trained on
  config.audit.k = 5  # training matches kept per synthetic image
  config.audit.threshold = 0.95  # used when no holdout set is given
  config.audit.holdout_percentile = 95.0  # Dar et al.'s rule, with a holdout set
  config.audit.block_size = 0  # training images per streamed block; 0: chosen by memjax
  config.audit.num_devices = 0  # devices of the mesh; 0: all of them
  # The most memory a search holds; larger images are searched in pieces of their pixels.
  config.audit.memory_gb = 2.0
  # Products: "float32", "bfloat16x3" (split products on a bfloat16 matrix unit, within 3e-6 of
  # float32), or "auto" (bfloat16x3 on GPUs, TPUs and CPUs with AMX, else float32).
  config.audit.precision = "auto"
  config.audit.nifti_slice_axis = config_dict.placeholder(int)  # None: NIfTI files are volumes
  config.audit.grayscale = False  # convert color images to one channel
  config.audit.num_pairs = 8  # most correlated pairs shown in pairs.png and the report
  config.audit.redact_training_images = False  # a report with no training pixels
  config.audit.progress = True  # progress bars on stderr
  # the detectors, comma-separated: "correlation" (pixels, Akbar et al.), "transformed" (pixels
  # under flips, turns by 90 degrees and shifts, exactly), "embedding" (a contrastive encoder's
  # embeddings, Dar et al.; needs the work dir of a trained encoder, configs/*_contrastive.py, its
  # latest checkpoint unless encoder_step is given)
  config.audit.detectors = "correlation"
  config.audit.detector = ""  # deprecated: the old single setting ("both": correlation,embedding)
  config.audit.max_shift = config_dict.placeholder(int)  # "transformed": None = 1/8 of the side
  config.audit.copy_level = 0.9999  # an image at or above it by any detector: "do not release"
  config.audit.calibration_margin = 0.01  # warn when a calibrated threshold is this close to 1
  config.audit.min_holdout_images = 10  # a smaller holdout set is refused
  config.audit.encoder = ""  # the embedding detector: a contrastive encoder's work dir
  config.audit.encoder_step = config_dict.placeholder(int)  # None: its latest checkpoint

  # Training (workflow "train") and sampling ("sample"): see memjax/train/loop.py and the
  # training configs (configs/*_ddpm.py), which set `model`.
  config.num_devices = 0  # devices of the data mesh; 0: all of them
  config.batch_size = 32  # global, split over the devices
  config.num_train_steps = 100_000  # training ends at this step
  config.log_every_steps = 100  # TensorBoard scalars in workdir/events, averaged over these
  config.checkpoint_every_steps = 1000  # a checkpoint in workdir/checkpoints every N steps
  config.keep_checkpoints = 3  # the last N checkpoints are kept
  config.async_checkpoints = True  # save checkpoints while training goes on
  config.sample_every_steps = 0  # an image grid in workdir/grids every N steps; 0: never
  config.grid_size = 16  # images in a training-time grid
  config.ema_decay = 0.9999  # EMA of the weights, used to sample; 0: no EMA
  config.num_samples = 1000  # images the sample workflow writes to workdir/samples
  config.sample_batch_size = 64  # images generated per chunk (one .npz file each)
  config.progress = True  # progress bars on stderr

  config.data = ml_collections.ConfigDict()
  # The training images: a folder (PNG 8/16-bit, JPEG, TIFF, NIfTI, .npy/.npz), a .npy or .npz
  # file, or 'tfds:NAME/CONFIG:SPLIT' (memjax --config=prepare; mni152 is prepared on first use).
  # Pixels enter the models in [-1, 1] by the range of their stored type (README, "Training on
  # your own images").
  config.data.source = config_dict.placeholder(str)
  config.data.data_dir = config_dict.placeholder(str)  # default $MEMJAX_DATA_DIR
  config.data.nifti_slice_axis = config_dict.placeholder(int)  # NIfTI: slices on this axis
  config.data.volumes = False  # folders and arrays: images are 3D volumes (D, H, W[, C])
  config.data.downsample = 1  # train on means of N^d pixel blocks (small 3D models)
  # Train on a fixed subset of N images of the source (0: all of them), the same N every run and
  # on every process, chosen by subset_seed alone (not config.seed, so that models of different
  # seeds see the same images); for one seed, a smaller subset lies inside a larger one.
  config.data.num_images = 0
  config.data.subset_seed = 0  # which N images (with num_images)
  config.data.num_threads = 4  # threads reading and decoding batches
  config.data.prefetch_batches = 4  # batches read ahead of the step

  config.model = ml_collections.ConfigDict()
  config.model.name = config_dict.placeholder(str)  # the family: "ddpm"
  # Compute dtype of the models (U-Net, StyleGAN2's G and D, the encoder): "float32", or
  # "bfloat16" on accelerators (mixed precision: parameters, optimizer state, normalization
  # statistics and losses stay float32).
  config.model.dtype = "float32"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-4  # peak, after the warm-up
  config.optimizer.schedule = "constant"  # or "cosine" (to final_learning_rate_fraction)
  config.optimizer.warmup_steps = 1000  # linear warm-up from 0
  config.optimizer.final_learning_rate_fraction = 0.0  # cosine: the last rate / the peak
  config.optimizer.b1 = 0.9  # Adam's first-moment decay
  config.optimizer.b2 = 0.999  # Adam's second-moment decay
  config.optimizer.eps = 1e-8  # Adam's epsilon
  config.optimizer.weight_decay = 0.0  # AdamW's decoupled weight decay
  config.optimizer.grad_clip_norm = 1.0  # clip the global gradient norm; 0: no clipping
  return config


def ddpm(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds a U-Net DDPM's keys to `config`, at openai/guided-diffusion's defaults.

  model.* are the U-Net's (memjax/models/unet.py; channels and image size come from the data),
  diffusion.* the noise schedule, sample.* the sampler of the sample workflow and of grids. The
  values are guided-diffusion's `script_util.model_and_diffusion_defaults()`, under its names
  (num_channels is model_channels, diffusion_steps is diffusion.num_steps): 128 channels, 2
  residual blocks per level, channel_mult by image size, attention at 16 and 8 with 4 heads,
  scale-shift norm, no dropout, 1000 linear steps, learn_sigma and sigma_small off (so sampling
  uses the FIXED_LARGE variance). Its other defaults are memjax's fixed choices: no class
  conditioning, conv_resample, an epsilon model, the MSE loss (use_kl, predict_xstart,
  rescale_timesteps and rescale_learned_sigmas off), num_heads_upsample = num_heads.
  The optimizer keys stay the common ones of `get_config`; the paper configs
  (configs/cxr_ddpm.py) set guided-diffusion's (no warm-up, no clipping).
  """
  config.model.name = "ddpm"
  config.model.model_channels = 128  # guided-diffusion's num_channels
  # (): guided-diffusion's choice for the image size: 64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4),
  # 256: (1, 1, 2, 2, 4, 4), 512: (0.5, 1, 1, 2, 2, 4, 4).
  config.model.channel_mult = ()
  config.model.num_res_blocks = 2
  # Feature-map sides with self-attention (the middle block always attends); guided-diffusion's
  # "16,8", which it turns into the downsampling factors image_size // 16 and image_size // 8.
  config.model.attention_resolutions = (16, 8)
  config.model.num_heads = 4  # heads per attention layer, when num_head_channels is -1
  config.model.num_head_channels = -1  # channels per head; -1: num_heads heads
  config.model.use_scale_shift_norm = True  # the embedding scales and shifts the 2nd GroupNorm
  config.model.resblock_updown = False  # True: ResBlocks down- and upsample, not convs
  config.model.use_new_attention_order = False  # True: qkv split before heads (QKVAttention)
  config.model.dropout = 0.0

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "linear"  # or "cosine"
  config.diffusion.num_steps = 1000

  config.sample = ml_collections.ConfigDict()
  config.sample.method = "ddpm"  # all diffusion steps, ancestral; or "ddim"
  # The ancestral steps' variance: "large" (betas, guided-diffusion's FIXED_LARGE, its default)
  # or "small" (the posterior variance, FIXED_SMALL: create_gaussian_diffusion's sigma_small).
  config.sample.variance = "large"
  config.sample.num_steps = 0  # DDIM steps; 0: all of them
  config.sample.eta = 0.0  # DDIM's noise; 0: deterministic
  return config


def stylegan2(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds StyleGAN2's keys to `config`: stylegan2-ada-pytorch's `auto` config below 512 px.

  That is fmaps 0.5 (channel_base 16384, at most 512 channels), lr 0.0025, Adam (0, 0.99), mbstd
  groups of 4, an EMA half-life of 10 kimg (auto's batch x 10 / 32 at batch 32) with ramp-up
  0.05 and ADA toward 0.6, except 8 mapping layers (its `stylegan2` and `paper256` configs and
  the StyleGAN2 paper; `auto` uses 2) and R1 gamma 10 (the `stylegan2` config's; `auto` computes
  0.0002 x resolution^2 / batch). The paper configs set every value themselves
  (configs/cxr_stylegan2.py).

  model.* are G's and D's (memjax/models/stylegan2.py; resolution and channels come from the
  data), loss.* the losses and lazy regularizers, ada.* the adaptive augmentation, ema_* the
  generator's EMA, sample.* the truncation and noise of the sample workflow and of grids.
  """
  config.model.name = "stylegan2"
  config.model.z_dim = 512
  config.model.w_dim = 512
  config.model.map_layers = 8  # stylegan2/paper256's; the reference's auto config uses 2
  config.model.mapping_lr_multiplier = 0.01
  config.model.channel_base = 16384  # channels min(channel_base / resolution, channel_max)
  config.model.channel_max = 512
  config.model.conv_clamp = 256.0
  config.model.mbstd_group_size = 4

  config.loss = ml_collections.ConfigDict()
  config.loss.r1_gamma = 10.0
  config.loss.r1_interval = 16  # lazy R1: every N steps; 0 with gamma 0 for none
  config.loss.pl_weight = 2.0  # path-length regularization; 0: none
  config.loss.pl_interval = 4
  config.loss.pl_batch_shrink = 2
  config.loss.pl_decay = 0.01
  config.loss.style_mixing_prob = 0.9

  config.ada = ml_collections.ConfigDict()
  config.ada.augment = "ada"  # "ada" (p adapted), "fixed" (p = initial_p) or "none"
  config.ada.initial_p = 0.0
  config.ada.target = 0.6  # E[sign(D(real))] that ADA steers toward
  config.ada.interval = 4  # steps between adjustments of p
  config.ada.kimg = 500.0  # thousands of images for p to move from 0 to 1
  # Per-transform probability multipliers and strengths (memjax.train.augment.AugmentOptions).
  config.ada.strengths = ml_collections.ConfigDict()

  config.optimizer.learning_rate = 0.0025
  config.optimizer.d_learning_rate = config_dict.placeholder(float)  # None: learning_rate
  config.optimizer.b1 = 0.0
  config.optimizer.b2 = 0.99
  config.optimizer.eps = 1e-8
  config.ema_kimg = 10.0  # half-life of the generator's EMA, in thousands of images
  config.ema_rampup = 0.05  # the half-life is at most this fraction of the images seen; None: off
  config.data.mirror = False  # x-flip real images at random (the reference's --mirror=1)

  config.sample = ml_collections.ConfigDict()
  config.sample.truncation_psi = 1.0
  config.sample.noise_mode = "const"  # as the reference's generate.py: "const", "random", "none"
  return config


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted keys ({"loss.r1_gamma": 1.0}) as --config.loss.r1_gamma=1.0 would."""
  for key, value in overrides.items():
    target = config
    *parents, name = key.split(".")
    for parent in parents:
      target = target[parent]
    target[name] = value
  return config
