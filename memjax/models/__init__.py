"""The generative models that the memorization literature audits, in JAX.

`unet.UNet` is the noise-prediction U-Net of Ho et al. (2020) as openai/guided-diffusion builds it
(2D images or 3D volumes, channels last); `diffusion` holds the Gaussian diffusion around it:
schedules, the training loss and the DDPM and DDIM samplers. Nothing here imports memjax.train,
memjax.memorization or memjax.data.
"""
