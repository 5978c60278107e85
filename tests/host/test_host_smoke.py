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


def test_a_loras_folder_is_gone_from_folder_paths_and_its_file_list_afterwards(tmp_path):
    import folder_paths

    from devkit.host import loras_folder

    before = folder_paths.get_folder_paths("loras")
    listed_before = folder_paths.get_filename_list("loras")  # the file-list cache holds the folders it saw
    (tmp_path / "only_here.safetensors").write_bytes(b"")
    with loras_folder(tmp_path):
        assert folder_paths.get_folder_paths("loras") == [str(tmp_path), *before]
        assert "only_here.safetensors" in folder_paths.get_filename_list("loras")
    assert folder_paths.get_folder_paths("loras") == before
    assert folder_paths.get_filename_list("loras") == listed_before
