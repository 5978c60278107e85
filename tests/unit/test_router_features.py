import math

import pytest
import torch
from factories import trained_layer
from safetensors.torch import save_file

import ortho_hydra
from ortho_hydra import OrthoHydraError
from ortho_hydra.fei import frequency_energy_index
from ortho_hydra.moe_format import adapter_tensors
from ortho_hydra.routing import band_mask, sigma_features


def test_sigma_features_follow_the_reference_definition():
    sigma = torch.tensor([0.0, 0.37, 1.0])
    feats = sigma_features(sigma, 8)
    for b, s in enumerate(sigma.tolist()):
        for k in range(4):
            omega = 10000.0 ** (-k / 4)
            assert feats[b, k].item() == pytest.approx(math.cos(s * omega), abs=1e-6)
            assert feats[b, 4 + k].item() == pytest.approx(math.sin(s * omega), abs=1e-6)
    assert torch.equal(sigma_features(torch.zeros(1), 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def test_band_mask_is_interleaved_and_edges_go_to_the_lower_band():
    edges = (0.0, 0.5, 0.8, 1.0)
    mask = band_mask(torch.tensor([0.1, 0.5, 0.50001, 0.8, 0.95, 1.2]), edges, num_experts=6)
    bands = [0, 0, 1, 1, 2, 2]
    for row, band in enumerate(bands):
        assert mask[row].tolist() == [e % 3 == band for e in range(6)], row


def _fei64(z: torch.Tensor, div: float = 4.0) -> torch.Tensor:
    """Dense fp64 reference: blur as explicit reflect-padded matrices along W then H."""
    z = z.double()
    _, _, h, w = z.shape
    std = min(h, w) / div
    half = max(1, math.ceil(3 * std))

    def blur_matrix(n):
        m = torch.zeros(n, n, dtype=torch.float64)
        taps = torch.tensor([math.exp(-(d * d) / (2 * std * std)) for d in range(-half, half + 1)],
                            dtype=torch.float64)
        taps /= taps.sum()
        for i in range(n):
            for j, d in enumerate(range(-half, half + 1)):
                src = i + d
                src = -src if src < 0 else (2 * (n - 1) - src if src > n - 1 else src)  # reflect
                m[i, src] += taps[j]
        return m

    lp = blur_matrix(h) @ z @ blur_matrix(w).T
    low, high = lp.pow(2).sum((1, 2, 3)), (z - lp).pow(2).sum((1, 2, 3))
    return torch.stack([low, high], -1) / (low + high)[:, None]


def test_fei_matches_a_dense_fp64_blur_and_its_limits():
    z = torch.randn(3, 4, 16, 12, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(frequency_energy_index(z).double(), _fei64(z), atol=1e-5)
    flat = torch.full((1, 4, 16, 16), 2.5)
    assert torch.allclose(frequency_energy_index(flat), torch.tensor([[1.0, 0.0]]), atol=1e-6)
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0).expand(1, 4, 16, 16)
    assert frequency_energy_index(checker)[0, 1] > 0.99
    video = z.unsqueeze(2)  # (B, C, T=1, H, W)
    assert torch.allclose(frequency_energy_index(video), frequency_energy_index(z))


def test_fei_router_reads_and_uses_the_fei_columns(tmp_path):
    layer = ortho_hydra.distill(trained_layer(rank=4, experts=3))
    tensors = adapter_tensors(ortho_hydra.Adapter(layers={layer.name: layer}))
    w = torch.randn(3, 4 + 2)
    tensors[f"{layer.name}.router.weight"] = w
    path = tmp_path / "fei_moe.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_spec": "hydra", "ss_router_source": "fei",
                                            "ss_fei_feature_dim": "2", "ss_fei_sigma_low_div": "4.0"})
    loaded = ortho_hydra.load(path).layers[layer.name]
    assert loaded.router.fei_dim == 2 and loaded.router.sigma_dim == 0
    x = torch.randn(2, 5, 40)
    fei = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    pooled = (x @ layer.down.T).pow(2).mean(1).sqrt()
    expected = torch.softmax(torch.cat([pooled, fei], -1) @ w.T + layer.router_bias, -1)
    assert torch.allclose(loaded.gate(x, fei=fei), expected, atol=1e-6)
    with pytest.raises(ValueError, match="FEI"):
        loaded.gate(x)


def test_sigma_router_width_is_derived_and_used(tmp_path):
    layer = ortho_hydra.distill(trained_layer(rank=4, experts=3, sigma_feature_dim=16))
    assert layer.router.sigma_dim == 16 and layer.router_weight.shape == (3, 20)
    layer.router_weight = torch.randn(3, 20)
    path = tmp_path / "sig.safetensors"
    ortho_hydra.save(ortho_hydra.Adapter(layers={layer.name: layer}), path)
    loaded = ortho_hydra.load(path).layers[layer.name]
    assert loaded.router.sigma_dim == 16 and loaded.router.source == "sigma"
    x = torch.randn(2, 5, 40)
    sigma = torch.tensor([0.1, 0.9])
    pooled = (x @ layer.down.T).pow(2).mean(1).sqrt()
    expected = torch.softmax(torch.cat([pooled, sigma_features(sigma, 16)], -1) @ loaded.router_weight.T
                             + loaded.router_bias, -1)
    assert torch.allclose(loaded.gate(x, sigma), expected, atol=1e-6)


def test_global_router_files_are_refused(tmp_path):
    tensors = adapter_tensors(ortho_hydra.Adapter(layers={"l": ortho_hydra.distill(trained_layer(name="l"))}))
    tensors["global_router.weight"] = torch.zeros(3, 8)
    path = tmp_path / "g.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_spec": "hydra", "ss_route_per_layer": "false"})
    with pytest.raises(OrthoHydraError, match="GlobalRouter") as err:
        ortho_hydra.load(path)
    assert "Fix:" in str(err.value)
    save_file(adapter_tensors(ortho_hydra.Adapter(layers={"l": ortho_hydra.distill(trained_layer(name="l"))})),
              str(path), metadata={"ss_router_source": "crossattn_emb"})
    with pytest.raises(OrthoHydraError, match=r"'crossattn_emb' .*network-level GlobalRouter"):
        ortho_hydra.load(path)


def test_bands_without_explicit_edges_are_uniform(tmp_path):
    layer = ortho_hydra.distill(trained_layer(rank=4, experts=4, sigma_feature_dim=2))
    layer.ups = torch.cat([layer.ups, layer.ups[:2]])
    layer.router_weight = torch.cat([layer.router_weight, layer.router_weight[:2]])
    layer.router_bias = torch.cat([layer.router_bias, layer.router_bias[:2]])
    tensors = adapter_tensors(ortho_hydra.Adapter(layers={layer.name: layer}))
    path = tmp_path / "b.safetensors"
    save_file(tensors, str(path), metadata={"ss_router_source": "sigma", "ss_specialize_experts_by_sigma_buckets":
                                            "true", "ss_num_sigma_buckets": "3"})
    loaded = ortho_hydra.load(path).layers[layer.name]
    assert loaded.router.sigma_bands == pytest.approx((0.0, 1 / 3, 2 / 3, 1.0))
    save_file(tensors, str(path), metadata={"ss_router_source": "sigma", "ss_specialize_experts_by_sigma_buckets":
                                            "true", "ss_num_sigma_buckets": "4"})
    with pytest.raises(OrthoHydraError, match="6 experts cannot split evenly into 4"):
        ortho_hydra.load(path)
