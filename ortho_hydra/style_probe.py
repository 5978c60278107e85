"""A style probe: which style is this latent in?  Pure torch; never imports ComfyUI.

The probe is a measuring instrument for style experiments (does an adapter's sample carry style k?), so it
is deliberately simple and deterministic:

* **Features** (:func:`latent_features`) are fixed statistics of the image a person sees.  With
  ``rgb_factors`` (the model's ``latent_rgb_factors``, C x 3, and optional bias) the latent is first mapped
  to its preview RGB exactly as a latent preview does (``(latent · F + b + 1) / 2``, clamped to [0, 1]);
  without them the latent channels are used as they are.  On those channels: per-channel mean, standard
  deviation and 10 % / 90 % quantiles (the palette: background and foreground colours), and on the
  luminance the log energy in three radial 2-D FFT bands (low / mid / high frequency: smooth versus
  textured versus grainy) and along the two frequency axes (stripes: energy along f_y with f_x = 0 is
  horizontal stripes) and on the diagonals (dot lattices).  Energies are logs, so a global contrast change
  shifts them instead of multiplying them, and none of them depends on where the content sits.
* **Classifier**: nearest centroid after scaling every feature by its pooled within-class standard
  deviation, floored at a fraction of its overall standard deviation (a diagonal LDA with a variance
  floor), so a feature that happens to be constant in clean training data cannot dominate the distance
  when a blurrier, noisier generated sample arrives.  Closed form, no randomness.
* **Validity**: :meth:`StyleProbe.validate` measures held-out accuracy and raises
  :class:`ProbeInvalidError` below the threshold (0.95 by default); ``probe.valid`` and
  ``probe.held_out_accuracy`` record the outcome, and :meth:`StyleProbe.require_valid` (or
  ``predict(..., require_valid=True)``) refuses to measure with a probe that has not passed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import OrthoHydraError

QUANTILES = (0.1, 0.9)
# radial bands in cycles per pixel (Nyquist = 0.5); the last band includes the corners
BANDS = ((0.0, 0.125), (0.125, 0.3), (0.3, 1.0))
VARIANCE_FLOOR = 0.05  # fraction of a feature's overall variance added to its within-class variance


class ProbeInvalidError(OrthoHydraError):
    """The probe's held-out accuracy is below the validity threshold: it is not a valid instrument."""


def preview_rgb(latents: torch.Tensor, rgb_factors, rgb_bias=None) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, 3, H, W) preview image in [0, 1] (the latent preview's linear map)."""
    weight = torch.as_tensor(rgb_factors, dtype=torch.float32)
    rgb = torch.einsum("bchw,cd->bdhw", latents.float(), weight)
    if rgb_bias is not None:
        rgb = rgb + torch.as_tensor(rgb_bias, dtype=torch.float32).view(1, -1, 1, 1)
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)


def _frequency_masks(h: int, w: int) -> list[torch.Tensor]:
    fy = torch.fft.fftfreq(h).view(-1, 1).expand(h, w)
    fx = torch.fft.fftfreq(w).view(1, -1).expand(h, w)
    radius = (fx ** 2 + fy ** 2).sqrt()
    masks = [(radius > lo) & (radius <= hi) for lo, hi in BANDS]
    masks[0] = masks[0] | (radius == 0)  # (removed mean: contributes nothing)
    axis_y = (fx == 0) & (fy.abs() >= 0.2)   # varies along y only: horizontal stripes
    axis_x = (fy == 0) & (fx.abs() >= 0.2)   # varies along x only: vertical stripes
    diagonal = (fx.abs() >= 0.2) & (fy.abs() >= 0.2)  # both: dot lattices, checkers
    return [*masks, axis_y, axis_x, diagonal]


FEATURE_NAMES_PER_CHANNEL = ("mean", "std", *(f"q{round(q * 100)}" for q in QUANTILES))
SPECTRAL_FEATURE_NAMES = ("log_e_low", "log_e_mid", "log_e_high", "log_e_axis_y", "log_e_axis_x", "log_e_diag")


def feature_names(channels: int) -> list[str]:
    names = [f"{stat}[{c}]" for stat in FEATURE_NAMES_PER_CHANNEL for c in range(channels)]
    return names + list(SPECTRAL_FEATURE_NAMES)


def image_features(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images -> (B, 4·C + 6) features (see the module docstring)."""
    if images.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    x = images.double()
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    stats = [flat.mean(-1), flat.std(-1, unbiased=False)]
    stats += [torch.quantile(flat, q, dim=-1) for q in QUANTILES]
    lum = x.mean(1)
    lum = lum - lum.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(lum).abs() ** 2 / (h * w)
    spectral = [torch.log((power * m).sum(dim=(-2, -1)) / (h * w) + 1e-6) for m in _frequency_masks(h, w)]
    return torch.cat([*stats, torch.stack(spectral, -1)], -1).float()


def latent_features(latents: torch.Tensor, rgb_factors=None, rgb_bias=None) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, F) fixed statistics, on the preview RGB when ``rgb_factors`` is given."""
    if latents.ndim == 3:
        latents = latents.unsqueeze(0)
    images = preview_rgb(latents, rgb_factors, rgb_bias) if rgb_factors is not None else latents.float()
    return image_features(images)


class StyleProbe:
    """Nearest-centroid style classifier on :func:`latent_features` (see the module docstring)."""

    def __init__(self, rgb_factors=None, rgb_bias=None, variance_floor: float = VARIANCE_FLOOR):
        self.rgb_factors = None if rgb_factors is None else torch.as_tensor(rgb_factors, dtype=torch.float32)
        self.rgb_bias = None if rgb_bias is None else torch.as_tensor(rgb_bias, dtype=torch.float32)
        self.variance_floor = variance_floor
        self.classes: torch.Tensor | None = None
        self.centroids: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self.held_out_accuracy: float | None = None
        self.threshold: float | None = None

    # --- fitting -------------------------------------------------------------------------------------------
    def features(self, latents: torch.Tensor) -> torch.Tensor:
        return latent_features(latents, self.rgb_factors, self.rgb_bias)

    def fit(self, latents: torch.Tensor, labels) -> StyleProbe:
        return self.fit_features(self.features(latents), labels)

    def fit_features(self, features: torch.Tensor, labels) -> StyleProbe:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        feats = features.double()
        if feats.ndim != 2 or feats.shape[0] != labels.shape[0]:
            raise ValueError(f"features {tuple(feats.shape)} and labels {tuple(labels.shape)} do not match")
        classes = torch.unique(labels)  # sorted
        if classes.numel() < 2:
            raise ValueError("a style probe needs at least two classes")
        centroids = torch.stack([feats[labels == k].mean(0) for k in classes])
        residual = feats - centroids[torch.searchsorted(classes, labels)]
        within = residual.pow(2).sum(0) / max(feats.shape[0] - classes.numel(), 1)
        total = feats.var(0, unbiased=False)
        self.scale = (within + self.variance_floor * total + 1e-12).sqrt()
        self.classes, self.centroids = classes, centroids
        self.held_out_accuracy = None  # a refitted probe must be validated again
        self.threshold = None
        return self

    # --- measuring -----------------------------------------------------------------------------------------
    def distances_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K) squared scaled distances to each class centroid (columns follow ``self.classes``)."""
        if self.centroids is None:
            raise RuntimeError("StyleProbe is not fitted; call fit(latents, labels) first")
        z = features.double() / self.scale
        return torch.cdist(z, self.centroids / self.scale).pow(2)

    def distances(self, latents: torch.Tensor) -> torch.Tensor:
        return self.distances_features(self.features(latents))

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.classes[self.distances_features(features).argmin(-1)]

    def predict(self, latents: torch.Tensor, require_valid: bool = False) -> torch.Tensor:
        if require_valid:
            self.require_valid()
        return self.predict_features(self.features(latents))

    def accuracy(self, latents: torch.Tensor, labels) -> float:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        return (self.predict(latents) == labels).double().mean().item()

    def accuracy_features(self, features: torch.Tensor, labels) -> float:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        return (self.predict_features(features) == labels).double().mean().item()

    # --- validity ------------------------------------------------------------------------------------------
    @property
    def valid(self) -> bool:
        return (self.held_out_accuracy is not None and self.threshold is not None
                and self.held_out_accuracy >= self.threshold)

    def validate(self, held_out_latents: torch.Tensor, labels, threshold: float = 0.95) -> float:
        """Held-out accuracy; raises :class:`ProbeInvalidError` when it is below ``threshold``."""
        return self._record(self.accuracy(held_out_latents, labels), threshold, len(held_out_latents))

    def validate_features(self, features: torch.Tensor, labels, threshold: float = 0.95) -> float:
        return self._record(self.accuracy_features(features, labels), threshold, int(features.shape[0]))

    def _record(self, accuracy: float, threshold: float, count: int) -> float:
        self.held_out_accuracy, self.threshold = accuracy, threshold
        if accuracy < threshold:
            raise ProbeInvalidError(
                f"style probe held-out accuracy {accuracy:.3f} on {count} latents is below the validity threshold "
                f"{threshold:.2f}: it is not a valid instrument.",
                fix="use styles that differ in palette or texture statistics, or more training latents.")
        return accuracy

    def require_valid(self) -> None:
        if self.held_out_accuracy is None:
            raise ProbeInvalidError("style probe has not been validated on held-out latents.",
                                    fix="call probe.validate(held_out_latents, labels) first.")
        if not self.valid:
            raise ProbeInvalidError(f"style probe held-out accuracy {self.held_out_accuracy:.3f} is below "
                                    f"{self.threshold:.2f}: it is not a valid instrument.")

    # --- persistence ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.centroids is None:
            raise RuntimeError("StyleProbe is not fitted")
        state = {"classes": self.classes, "centroids": self.centroids, "scale": self.scale,
                 "variance_floor": torch.tensor(self.variance_floor, dtype=torch.float64)}
        if self.rgb_factors is not None:
            state["rgb_factors"] = self.rgb_factors
        if self.rgb_bias is not None:
            state["rgb_bias"] = self.rgb_bias
        if self.held_out_accuracy is not None:
            state["held_out_accuracy"] = torch.tensor(self.held_out_accuracy, dtype=torch.float64)
            state["threshold"] = torch.tensor(self.threshold, dtype=torch.float64)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> StyleProbe:
        probe = cls(state.get("rgb_factors"), state.get("rgb_bias"), float(state["variance_floor"]))
        probe.classes, probe.centroids, probe.scale = state["classes"], state["centroids"], state["scale"]
        if "held_out_accuracy" in state:
            probe.held_out_accuracy = float(state["held_out_accuracy"])
            probe.threshold = float(state["threshold"])
        return probe


def confusion(predicted: torch.Tensor, labels, classes: Sequence[int]) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class, in the order of ``classes``."""
    index = {int(k): i for i, k in enumerate(classes)}
    out = torch.zeros(len(classes), len(classes), dtype=torch.long)
    for p, t in zip(torch.as_tensor(predicted).tolist(), torch.as_tensor(labels).tolist(), strict=True):
        out[index[int(t)], index[int(p)]] += 1
    return out
