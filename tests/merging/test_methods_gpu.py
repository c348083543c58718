"""Every method on CUDA agrees with CPU (deterministic ones) and is seed-reproducible (randomized ones)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from merging.methods import TensorInputs, all_methods, resolve_params
from tests.merging.helpers import model_count, required_globals

pytestmark = pytest.mark.gpu

NAMES = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
]


def _inputs(spec, device, name, seed=0):
    g = torch.Generator().manual_seed(1)
    shape = (48, 32) if "norm" not in name else (48,)
    base = torch.randn(shape, generator=g)
    models = [base + 0.05 * torch.randn(shape, generator=g) for _ in range(model_count(spec))]
    params = {"weight": 1.0} if spec.param("weight") else {}
    if spec.param("density"):
        params["density"] = 0.5
    params.update(required_globals(spec))
    gp, mp = resolve_params(spec, params, [{}] * len(models))
    gen = torch.Generator(device=device).manual_seed(seed)
    given_base = None if spec.name == "passthrough" else base.to(device)  # passthrough: one input in all
    return TensorInputs(name, given_base, [m.to(device) for m in models], mp, gp, gen)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spec", all_methods(), ids=lambda s: s.name)
def test_cuda_matches_cpu(spec, name):
    out = spec.merge(_inputs(spec, "cuda", name))
    assert out.device.type == "cuda" and out.dtype == torch.float32
    if spec.randomized:
        again = spec.merge(_inputs(spec, "cuda", name))
        other = spec.merge(_inputs(spec, "cuda", name, seed=1))
        assert torch.equal(out, again) and not torch.equal(out, other)
    else:
        assert_close(out.cpu(), spec.merge(_inputs(spec, "cpu", name)), atol=1e-4, rtol=1e-4)
