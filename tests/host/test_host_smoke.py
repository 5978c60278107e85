import torch

from devkit import tiny_dit


def test_tiny_mmdit_loads_as_sd3_and_samples():
    import comfy.model_base

    model = tiny_dit.load_mmdit(depth=2)
    assert isinstance(model.model, comfy.model_base.SD3)
    latent = torch.zeros(1, 16, 16, 16)
    positive = tiny_dit.mmdit_conditioning(seed=1)
    negative = tiny_dit.mmdit_conditioning(seed=2)
    out = tiny_dit.sample(model, latent, positive, negative, steps=4)
    assert out.shape == latent.shape
    assert torch.isfinite(out).all()
    assert out.std() > 0.05  # a real denoise happened, not a pass-through of zeros
    again = tiny_dit.sample(model, latent, positive, negative, steps=4)
    assert torch.equal(out, again)  # deterministic given the seed



def test_what_requirements_txt_leaves_to_comfyui_is_in_this_hosts_requirements():
    from devkit.host import COMFY_DIR
    from devkit.packaging import COMFYUI_PROVIDES, declared

    host = declared((COMFY_DIR / "requirements.txt").read_text().splitlines())
    assert COMFYUI_PROVIDES <= host, COMFYUI_PROVIDES - host
