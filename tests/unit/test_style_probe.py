"""The style probe (ortho_hydra.style_probe) on synthetic latents: pure torch, no ComfyUI."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ortho_hydra import OrthoHydraError
from ortho_hydra.style_probe import (
    ProbeInvalidError,
    StyleProbe,
    confusion,
    feature_names,
    image_features,
    latent_features,
    preview_rgb,
)

ROOT = Path(__file__).resolve().parents[2]


def _synthetic(n_per_class: int, seed: int, size: int = 16):
    """Three 'styles' on random blob contents: red-ish flat, blue horizontal stripes, grey grain."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.arange(size).view(-1, 1).expand(size, size)
    images, labels = [], []
    for k in range(n_per_class):
        for style in range(3):
            cy, cx = torch.randint(4, size - 4, (2,), generator=g).tolist()
            r = 2.5 + torch.rand((), generator=g).item() * 2
            xx = torch.arange(size).view(1, -1).expand(size, size)
            mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()
            if style == 0:
                bg, fg, tex = torch.tensor([0.4, 0.1, 0.05]), torch.tensor([1.0, 0.6, 0.2]), 0.0
            elif style == 1:
                bg, fg = torch.tensor([0.05, 0.1, 0.4]), torch.tensor([0.5, 0.8, 1.0])
                tex = 0.1 * torch.where((yy // 2) % 2 == 0, 1.0, -1.0)
            else:
                bg, fg = torch.tensor([0.05, 0.05, 0.05]), torch.tensor([0.9, 0.9, 0.9])
                tex = 0.1 * torch.randn(size, size, generator=g)
            img = bg.view(3, 1, 1) + (fg - bg).view(3, 1, 1) * mask + tex
            images.append(img.clamp(0, 1))
            labels.append(style)
        del k
    return torch.stack(images), torch.tensor(labels)


def _factors():
    g = torch.Generator().manual_seed(123)
    return torch.randn(16, 3, generator=g) * 0.1, torch.tensor([0.2, 0.1, 0.0])


def _to_latent(images, factors, bias):
    """Minimum-norm latents whose preview is ``images``."""
    target = 2 * images - 1 - bias.view(1, 3, 1, 1)
    lift = factors @ torch.linalg.inv(factors.T @ factors)
    return torch.einsum("kc,bchw->bkhw", lift, target)


def test_preview_rgb_is_the_latent_preview_map_and_inverts_the_pseudo_inverse():
    f, b = _factors()
    images, _ = _synthetic(2, seed=0)
    latents = _to_latent(images, f, b)
    manual = ((latents.movedim(1, -1) @ f + b + 1) / 2).clamp(0, 1).movedim(-1, 1)
    assert torch.allclose(preview_rgb(latents, f, b), manual, atol=1e-6)
    assert torch.allclose(preview_rgb(latents, f, b), images, atol=1e-5)


def test_features_have_fixed_names_and_read_texture_orientation():
    images, labels = _synthetic(4, seed=1)
    feats = image_features(images)
    names = feature_names(3)
    assert feats.shape == (len(images), len(names))
    assert torch.isfinite(feats).all()
    stripes = feats[labels == 1]
    flat = feats[labels == 0]
    axis_y, axis_x = names.index("log_e_axis_y"), names.index("log_e_axis_x")
    assert (stripes[:, axis_y] > stripes[:, axis_x] + 1.0).all()  # horizontal stripes: energy along f_y
    assert stripes[:, axis_y].mean() > flat[:, axis_y].mean() + 1.0
    grain = feats[labels == 2]
    high = names.index("log_e_high")
    assert grain[:, high].min() > flat[:, high].max()


def test_fit_predict_round_trip_on_latent_channels_and_on_preview_rgb():
    f, b = _factors()
    train_img, train_y = _synthetic(8, seed=2)
    test_img, test_y = _synthetic(8, seed=3)
    for probe in (StyleProbe(), StyleProbe(f, b)):
        train = _to_latent(train_img, f, b) if probe.rgb_factors is not None else train_img
        test = _to_latent(test_img, f, b) if probe.rgb_factors is not None else test_img
        probe.fit(train, train_y)
        assert torch.equal(probe.classes, torch.tensor([0, 1, 2]))
        assert probe.accuracy(train, train_y) == 1.0
        assert probe.validate(test, test_y) == 1.0
        assert probe.valid and probe.held_out_accuracy == 1.0
        probe.require_valid()
        assert torch.equal(probe.predict(test, require_valid=True), test_y)
        assert torch.equal(confusion(probe.predict(test), test_y, [0, 1, 2]), torch.diag(torch.tensor([8, 8, 8])))


def test_arbitrary_label_values_are_kept():
    images, labels = _synthetic(4, seed=4)
    named = labels * 10 + 7
    probe = StyleProbe().fit(images, named)
    assert torch.equal(probe.predict(images), named)


def test_validity_check_raises_below_threshold_and_flags_the_probe():
    images, labels = _synthetic(8, seed=5)
    held, held_y = _synthetic(8, seed=6)
    probe = StyleProbe().fit(images, labels)
    with pytest.raises(ProbeInvalidError, match="not been validated"):
        probe.require_valid()
    wrong = (held_y + 1) % 3  # every held-out label wrong: accuracy 0
    with pytest.raises(ProbeInvalidError, match=r"below the validity threshold 0\.95") as info:
        probe.validate(held, wrong)
    assert isinstance(info.value, OrthoHydraError)
    assert probe.held_out_accuracy == 0.0 and not probe.valid
    with pytest.raises(ProbeInvalidError):
        probe.predict(held, require_valid=True)
    # a threshold above what the probe reaches also invalidates it
    half = held_y.clone()
    half[: len(half) // 2] = (half[: len(half) // 2] + 1) % 3
    with pytest.raises(ProbeInvalidError):
        probe.validate(held, half, threshold=0.95)
    assert probe.validate(held, half, threshold=0.4) == pytest.approx(0.5)
    assert probe.valid
    probe.fit(images, labels)  # refitting forgets the validation
    assert not probe.valid


def test_fit_is_deterministic_and_survives_a_state_dict_round_trip():
    f, b = _factors()
    images, labels = _synthetic(6, seed=7)
    latents = _to_latent(images, f, b)
    one = StyleProbe(f, b).fit(latents, labels)
    two = StyleProbe(f, b).fit(latents.clone(), labels.clone())
    assert torch.equal(one.centroids, two.centroids) and torch.equal(one.scale, two.scale)
    assert torch.equal(latent_features(latents, f, b), latent_features(latents, f, b))
    held, held_y = _synthetic(6, seed=8)
    held = _to_latent(held, f, b)
    one.validate(held, held_y)
    copy = StyleProbe.from_state_dict(one.state_dict())
    assert torch.equal(copy.distances(held), one.distances(held))
    assert copy.valid and copy.held_out_accuracy == one.held_out_accuracy


def test_probe_tolerates_blur_and_noise_it_was_not_fitted_on():
    images, labels = _synthetic(8, seed=9)
    held, held_y = _synthetic(8, seed=10)
    probe = StyleProbe().fit(images, labels)
    kernel = torch.tensor([0.25, 0.5, 0.25])
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(held, (1, 1, 1, 1), mode="replicate"),
                                         (kernel.view(-1, 1) * kernel.view(1, -1)).expand(3, 1, 3, 3), groups=3)
    noisy = blurred + 0.03 * torch.randn(blurred.shape, generator=torch.Generator().manual_seed(0))
    assert probe.accuracy(noisy, held_y) >= 0.95


def test_bad_inputs_are_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        StyleProbe().predict(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="two classes"):
        StyleProbe().fit(torch.rand(4, 3, 8, 8), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="do not match"):
        StyleProbe().fit_features(torch.rand(4, 5), [0, 1, 0])


def test_the_probe_never_imports_comfyui():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ortho_hydra.style_probe; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(ROOT)], check=True, timeout=120)
