"""Gradients through comfy-kitchen's fused RMS-norm + split-half RoPE op, so the trainer can run on ComfyUI 0.33.

ComfyUI 0.33 runs the self-attention of Cosmos-Predict2 / Anima (and Ernie, Ideogram 4, MiniMax) through
``torch.ops.comfy_kitchen.rms_rope_split_half``: a ``torch.library.custom_op`` registered with no autograd formula,
so any backward through those blocks stops with "autograd kernel was not registered".  Inference is unaffected.

:func:`enable_kitchen_backward` registers a backward for that op (only where the op exists and has none): the
forward is the host's own kernel, untouched; the backward recomputes the op's math in plain torch
(``ortho_hydra.rms_rope``, checked against the host's kernel by the tests) and differentiates it.
Only a backward is added: every forward, in sampling and training, still runs ComfyUI's kernel.
"""

from __future__ import annotations

import importlib
import threading

import torch

from ortho_hydra.rms_rope import rms_rope_split_half_reference

OP_NAME = "comfy_kitchen::rms_rope_split_half"
_lock = threading.Lock()
_registered = False


def _setup_context(ctx, inputs, output) -> None:
    q, k, freqs, q_scale, k_scale, epsilon, rot_dim = inputs
    ctx.epsilon, ctx.rot_dim, ctx.shared_scale = epsilon, rot_dim, k_scale is None
    ctx.save_for_backward(q, k, freqs, q_scale, q_scale if k_scale is None else k_scale)


def _backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor) -> tuple:
    saved = ctx.saved_tensors
    if ctx.shared_scale:
        saved = saved[:4]
    leaves = [t.detach().requires_grad_() for t in saved]
    with torch.enable_grad():
        out = rms_rope_split_half_reference(*leaves[:4], None if ctx.shared_scale else leaves[4], ctx.epsilon,
                                            ctx.rot_dim)
        grads = torch.autograd.grad(out, leaves, (grad_q, grad_k), allow_unused=True)
    return (*grads, *([None] if ctx.shared_scale else []), None, None)


def kitchen_op() -> object | None:
    """The host's op, or None where comfy-kitchen (or this op) is absent (ComfyUI before 0.33)."""
    try:
        importlib.import_module("comfy_kitchen")  # registers its ops (ComfyUI imports it with comfy.quant_ops)
    except ImportError:
        return None
    namespace = getattr(torch.ops, "comfy_kitchen", None)
    try:
        return getattr(namespace, "rms_rope_split_half", None) if namespace is not None else None
    except (AttributeError, RuntimeError):
        return None


def _has_backward() -> bool:
    """Whether a backward through the op already works (the host or an earlier call registered one)."""
    with torch.inference_mode(False), torch.enable_grad():  # ComfyUI runs nodes inside inference mode
        q = torch.randn(1, 2, 1, 4, requires_grad=True)  # the kernels take float32 / 16-bit, not float64
        freqs = torch.eye(2).expand(1, 2, 1, 2, 2, 2).contiguous()
        try:
            out, _ = torch.ops.comfy_kitchen.rms_rope_split_half(q, q.detach(), freqs, torch.ones(4), None, 1e-6, 0)
            out.sum().backward()
        except (RuntimeError, NotImplementedError):
            return False
    return True


def enable_kitchen_backward() -> bool:
    """Register the backward once per process where the op exists and has none; True when gradients flow
    through the op afterwards (or it does not exist)."""
    global _registered
    if kitchen_op() is None:
        return True
    with _lock:
        if _registered or _has_backward():
            return True
        torch.library.register_autograd(OP_NAME, _backward, setup_context=_setup_context)
        _registered = True
    return _has_backward()
