"""Resume sidecar: everything training needs that the inference file must not carry.

Stored as safetensors next to the adapter (``<stem>.resume.safetensors``): the trainable
modules' full state (Cayley seeds, λ, frozen bases, router), the optimizer's per-parameter
state, the step and the RNG states.  Small JSON in the header carries the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .errors import OrthoHydraError
from .safetensors_io import check_finite, read_safetensors, write_safetensors

RESUME_SUFFIX = ".resume.safetensors"


def resume_path_for(adapter_path: str | os.PathLike) -> str:
    """``foo.safetensors`` -> ``foo.resume.safetensors``."""
    path = os.fspath(adapter_path)
    stem = path[: -len(".safetensors")] if path.endswith(".safetensors") else path
    return stem + RESUME_SUFFIX


@dataclass
class TrainingState:
    step: int
    module_states: dict[str, dict[str, torch.Tensor]]  # layer name -> state_dict
    optimizer_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # "layer/param" -> state
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # JSON-able: config, optimizer hyperparameters, model fingerprint


def save_training_state(path: str | os.PathLike, state: TrainingState) -> None:
    """Atomically write a resume sidecar; refuses NaN/Inf so a diverged run never overwrites a good one."""
    tensors: dict[str, torch.Tensor] = {}
    for layer, sd in state.module_states.items():
        for name, tensor in sd.items():
            tensors[f"module/{layer}/{name}"] = tensor
    for param, st in state.optimizer_state.items():
        for name, tensor in st.items():
            tensors[f"optim/{param}/{name}"] = torch.as_tensor(tensor)
    for name, tensor in state.rng.items():
        tensors[f"rng/{name}"] = tensor
    check_finite({k: v for k, v in tensors.items() if k.startswith("module/")}, path,
                 "training diverged; lower the learning rate and resume from an earlier checkpoint")
    meta = {"oh_resume_version": "1", "oh_step": str(state.step), "oh_info": json.dumps(state.info)}
    write_safetensors(path, tensors, meta)


def load_training_state(path: str | os.PathLike) -> TrainingState:
    """Read a sidecar written by :func:`save_training_state`."""
    tensors, meta = read_safetensors(path)
    if meta.get("oh_resume_version") != "1":
        raise OrthoHydraError("not an Ortho-Hydra resume file (no oh_resume_version stamp).", path=path,
                              key="oh_resume_version", fix=f"pick the '*{RESUME_SUFFIX}' written beside the adapter")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    optim: dict[str, dict[str, torch.Tensor]] = {}
    rng: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        kind, _, rest = key.partition("/")
        owner, _, name = rest.rpartition("/")
        if kind == "module":
            modules.setdefault(owner, {})[name] = tensor
        elif kind == "optim":
            optim.setdefault(owner, {})[name] = tensor
        elif kind == "rng":
            rng[rest] = tensor
    return TrainingState(step=int(meta.get("oh_step", "0")), module_states=modules, optimizer_state=optim,
                         rng=rng, info=json.loads(meta.get("oh_info", "{}")))


def gather_optimizer_state(optimizer: torch.optim.Optimizer,
                           names: Mapping[int, str]) -> dict[str, dict[str, torch.Tensor]]:
    """Optimizer state keyed by stable parameter names (``id(param)`` -> name) instead of positions."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for param, st in optimizer.state.items():
        out[names[id(param)]] = {k: torch.as_tensor(v).detach().clone() for k, v in st.items()}
    return out


def restore_optimizer_state(optimizer: torch.optim.Optimizer, saved: Mapping[str, Mapping[str, torch.Tensor]],
                            params: Mapping[str, torch.nn.Parameter], path: str | os.PathLike | None = None) -> None:
    """Inverse of :func:`gather_optimizer_state`; every saved name must exist and match in shape."""
    for name, st in saved.items():
        param = params.get(name)
        if param is None:
            raise OrthoHydraError(f"optimizer state for '{name}', which this model has no parameter for.",
                                  path=path, key=f"optim/{name}",
                                  fix="resume with the same model, target layers, rank and experts")
        restored = {}
        for key, tensor in st.items():
            if tensor.ndim and tensor.shape != param.shape:
                raise OrthoHydraError(f"optimizer state {tuple(tensor.shape)} does not fit {tuple(param.shape)}.",
                                      path=path, key=f"optim/{name}/{key}",
                                      fix="resume with the same rank and number of experts")
            restored[key] = tensor.to(param.device) if tensor.ndim else tensor.clone()
        optimizer.state[param] = restored


def parameter_names(network) -> dict[str, torch.nn.Parameter]:
    """``"<layer>/<param>"`` -> parameter, for a network exposing ``items()`` of (layer name, module)."""
    return {f"{prefix}/{n}": p for prefix, layer in network.items() for n, p in layer.named_parameters()}


def capture_training_state(network, optimizer: torch.optim.Optimizer, generator: torch.Generator, step: int,
                           info: Mapping) -> TrainingState:
    """Everything needed to continue this run bit for bit, as a :class:`TrainingState`."""
    names = {id(p): name for name, p in parameter_names(network).items()}
    return TrainingState(
        step=step,
        module_states={prefix: {k: v.detach().cpu() for k, v in layer.state_dict().items()}
                       for prefix, layer in network.items()},
        optimizer_state=gather_optimizer_state(optimizer, names),
        rng={"generator": generator.get_state()},
        info={**info, "param_groups": [{k: v for k, v in g.items() if k != "params"}
                                       for g in optimizer.param_groups]})


def restore_training_state(state: TrainingState, network, optimizer: torch.optim.Optimizer,
                           generator: torch.Generator, *, fingerprint: Mapping, config: Mapping,
                           path: str | os.PathLike | None = None) -> None:
    """Load ``state`` into a freshly built run, refusing one written for another model or other settings."""
    theirs_fp, theirs_config = state.info.get("fingerprint"), state.info.get("config")
    if theirs_fp != fingerprint:
        theirs = set(theirs_fp or {})
        detail = (f"it adapts {len(theirs)} layers, this model/target choice {len(fingerprint)}"
                  if theirs != set(fingerprint) else "the layer shapes differ")
        raise OrthoHydraError(f"this resume file was written for another model ({detail}).", path=path,
                              key="fingerprint", fix="resume with the same base model and target layers")
    if theirs_config != config:
        diff = {k: ((theirs_config or {}).get(k), v) for k, v in config.items()
                if (theirs_config or {}).get(k) != v}
        raise OrthoHydraError(f"settings differ from the run being resumed: {diff} (file, node).", path=path,
                              key="config", fix="use the settings of the original run")
    for prefix, layer in network.items():
        device = next(layer.parameters()).device
        layer.load_state_dict({k: v.to(device) for k, v in state.module_states[prefix].items()})
    restore_optimizer_state(optimizer, state.optimizer_state, parameter_names(network), path)
    generator.set_state(state.rng["generator"])
