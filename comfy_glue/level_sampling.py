"""Predict example latents at a few fixed noise levels through ComfyUI's own sampling machinery.

Whatever listens to the model while it runs (forward hooks for router features, a gate recording for drift) sees
every example at every level, with the model's own conditioning handling and device placement.
"""

from __future__ import annotations

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch
from comfy_extras import nodes_custom_sampler, nodes_train

from .training import predict_x0

LEVELS = (0.25, 0.5, 0.75)  # noise levels (fraction of the schedule)


class _LevelSampler(comfy.samplers.Sampler):
    """Predicts every example at each level, in chunks; samples nothing."""

    def __init__(self, seed: int, chunk: int = 8) -> None:
        self.seed, self.chunk = seed, chunk

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        model_wrap.conds = nodes_train.process_cond_list(model_wrap.conds)
        conds = model_wrap.conds["positive"]
        sampling = model_wrap.inner_model.model_sampling
        gen = torch.Generator().manual_seed(self.seed)
        count = latent_image.shape[0]
        pbar = comfy.utils.ProgressBar(len(LEVELS))
        for level in LEVELS:
            for start in range(0, count, self.chunk):
                comfy.model_management.throw_exception_if_processing_interrupted()
                idx = list(range(start, min(start + self.chunk, count)))
                sigma = torch.full((len(idx),), float(sampling.percent_to_sigma(1.0 - level)))
                noise_ = torch.randn(latent_image[idx].shape, generator=gen)
                predict_x0(model_wrap, conds, extra_args, latent_image, idx, sigma.to(latent_image.device), noise_)
            pbar.update(1)
        return torch.zeros_like(latent_image)


@torch.no_grad()
def predict_at_levels(model, latents: torch.Tensor, positive: list, seed: int) -> None:
    """Run ``model`` (a ModelPatcher) on every latent at every level in ``LEVELS``, with seeded noise.

    One conditioning entry is used for every latent; otherwise give one entry per latent.
    """
    if len(positive) == 1 and latents.shape[0] > 1:
        positive = positive * latents.shape[0]
    guider = nodes_custom_sampler.Guider_Basic(model)
    guider.set_conds(positive)
    try:
        guider.sample(torch.zeros_like(latents), latents, _LevelSampler(seed), torch.ones(1), seed=seed)
    finally:
        comfy.model_management.unload_all_models()
