"""Training through ComfyUI 0.33's fused RMS-norm + RoPE op (comfy-kitchen ``rms_rope_split_half``), which ships with
no backward: the pack registers one.  The plain-torch math must equal the host's kernel, the registered gradient
must equal autograd through the host's own eager composite, and a Cosmos block must train.  On a host without the
op (ComfyUI 0.3.x) only the Cosmos training test applies."""

import os
import subprocess
import sys

import pytest
import torch

from devkit import tiny_dit
from devkit.host import ROOT, import_pack

glue = import_pack().comfy_glue.kitchen_autograd
needs_op = pytest.mark.skipif(glue.kitchen_op() is None, reason="this ComfyUI has no comfy-kitchen rms_rope op")


def rotations(seq: int, half: int, gen: torch.Generator) -> torch.Tensor:
    angles = torch.randn(1, seq, 1, half, generator=gen)
    c, s = angles.cos(), angles.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


CASES = [(rot_dim, shared) for rot_dim in (0, 4) for shared in (False, True)]


@needs_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rot_dim", "shared"), CASES)
def test_plain_math_equals_the_hosts_kernel(dtype, rot_dim, shared):
    from ortho_hydra.rms_rope import rms_rope_split_half_reference

    gen = torch.Generator().manual_seed(rot_dim + shared)
    q, k = (torch.randn(2, 5, 3, 8, generator=gen).to(dtype) for _ in range(2))
    q_scale, k_scale = ((0.5 + torch.rand(8, generator=gen)).to(dtype) for _ in range(2))
    freqs = rotations(5, (rot_dim or 8) // 2, gen)
    args = (q, k, freqs, q_scale, None if shared else k_scale, 1e-6, rot_dim)
    for ours, host in zip(rms_rope_split_half_reference(*args), torch.ops.comfy_kitchen.rms_rope_split_half(*args),
                          strict=True):
        torch.testing.assert_close(ours, host)


@needs_op
@pytest.mark.parametrize(("rot_dim", "shared"), CASES)
def test_registered_gradient_equals_autograd_through_the_hosts_eager_math(rot_dim, shared):
    from comfy_kitchen.backends.eager import rope as host_eager

    assert glue.enable_kitchen_backward()
    gen = torch.Generator().manual_seed(10 + rot_dim + shared)
    leaves = [torch.randn(2, 5, 3, 8, generator=gen).requires_grad_() for _ in range(2)]
    leaves += [(0.5 + torch.rand(8, generator=gen)).requires_grad_() for _ in range(1 if shared else 2)]
    freqs = rotations(5, (rot_dim or 8) // 2, gen)
    upstream = [torch.randn(2, 5, 3, 8, generator=gen) for _ in range(2)]

    def grads(op) -> tuple:
        out = op(leaves[0], leaves[1], freqs, leaves[2], None if shared else leaves[3], 1e-6, rot_dim)
        return torch.autograd.grad(out, leaves, upstream)

    ours = grads(torch.ops.comfy_kitchen.rms_rope_split_half)
    host = grads(host_eager.rms_rope_split_half)
    for a, b in zip(ours, host, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@needs_op
def test_registration_happens_once_and_keeps_the_forward():
    assert glue.enable_kitchen_backward() and glue.enable_kitchen_backward()
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 2, 8, generator=gen)
    freqs = rotations(4, 4, gen)
    with torch.inference_mode():  # sampling: the host's kernel, no graph
        out, _ = torch.ops.comfy_kitchen.rms_rope_split_half(q, q, freqs, torch.ones(8), None, 1e-6, 0)
    assert out.is_inference()


def test_a_cosmos_block_trains_on_this_host():
    """Gradients reach every attention projection of a Cosmos-Predict2 block (the blocks of Anima): through the
    kitchen op on 0.33, through plain torch on 0.3.x."""
    assert tiny_dit.cosmos_backward_error() is None
    model = tiny_dit.load_cosmos(num_blocks=1, seed=0)
    dm = model.model.diffusion_model
    attn = dm.blocks[0].self_attn
    attn.q_proj.weight.requires_grad_(True)
    attn.k_proj.weight.requires_grad_(True)
    with torch.enable_grad():
        out = dm(torch.randn(1, 16, 1, 8, 8), torch.full((1,), 0.5), torch.randn(1, 4, 1024))
        out.float().pow(2).mean().backward()
    for weight in (attn.q_proj.weight, attn.k_proj.weight):
        assert weight.grad is not None and torch.isfinite(weight.grad).all() and weight.grad.abs().max() > 0


FRESH_PROCESS = """
import torch
from devkit.host import import_pack
glue = import_pack().comfy_glue.kitchen_autograd
with torch.inference_mode():  # as ComfyUI's executor runs the trainer node
    assert glue.enable_kitchen_backward()
q = torch.randn(1, 2, 1, 4, requires_grad=True)
freqs = torch.eye(2).expand(1, 2, 1, 2, 2, 2).contiguous()
out, _ = torch.ops.comfy_kitchen.rms_rope_split_half(q, q, freqs, torch.ones(4), None, 1e-6, 0)
out.square().sum().backward()
assert q.grad is not None and q.grad.abs().max() > 0
print("ok")
"""


@needs_op
def test_enabling_inside_inference_mode_in_a_fresh_process():
    """ComfyUI runs the trainer node inside inference mode: registration and its check must work there, the first
    time in a process (a fresh interpreter, so no earlier test has registered it)."""
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
