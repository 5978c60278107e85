"""The router fit: a logistic regression on standardised features, returned as a router on the raw features."""

import torch

from ortho_hydra.router_fit import fit_router


def test_fit_separates_labelled_features_despite_a_large_common_mode():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    centres = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]) * 0.05
    common = torch.tensor([5.0, 4.0, 6.0, 3.0])  # a large common mode, as DiT router inputs have
    x = common + centres[labels] + 0.01 * torch.randn(90, 4, generator=g)
    weight, bias = fit_router(x, labels, 3, steps=300)
    assert ((x @ weight.T + bias).argmax(-1) == labels).double().mean() > 0.95
