"""Every method gives the same tensor whether it computes the task vectors itself or reads the engine's
precomputed stack, and never writes into that stack (geometry reads it after the method)."""

import pytest
import torch

from merging.methods import all_methods, resolve_params
from merging.methods.base import ModelsFromTaskVectors, TensorInputs
from tests.merging.helpers import model_count, required_globals

PER_MODEL = {"weight": 0.8, "density": 0.6, "gamma": 0.05, "epsilon": 0.1}
NAMES = ["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "model.norm.weight"]


def _inputs(spec, name, shape):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=gen)
    models = [base + 0.1 * torch.randn(shape, generator=gen) for _ in range(model_count(spec))]
    per_model = [
        {k: v for k, v in PER_MODEL.items() if spec.param(k) and spec.param(k).per_model} for _ in models
    ]
    params, model_params = resolve_params(spec, required_globals(spec), per_model)
    return base, models, params, model_params


@pytest.mark.parametrize("spec", [s for s in all_methods() if s.needs_base], ids=lambda s: s.name)
@pytest.mark.parametrize("name", NAMES)
def test_engine_stack_gives_same_result(spec, name):
    shape = (6,) if name.endswith("norm.weight") else (6, 4)
    base, models, params, model_params = _inputs(spec, name, shape)
    plain = spec.merge(
        TensorInputs(name, base, models, model_params, params, torch.Generator().manual_seed(7))
    )
    stack = torch.stack(models) - base
    before = stack.clone()
    fast = spec.merge(
        TensorInputs(
            name,
            base,
            ModelsFromTaskVectors(base, stack),
            model_params,
            params,
            torch.Generator().manual_seed(7),
            stack,
        )
    )
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    assert torch.equal(stack, before), "a method wrote into the engine's task-vector stack"


def test_models_from_task_vectors_reads_as_weights():
    base = torch.tensor([1.0, 2.0])
    stack = torch.tensor([[0.5, -1.0], [0.0, 3.0]])
    models = ModelsFromTaskVectors(base, stack)
    assert len(models) == 2
    torch.testing.assert_close(models[1], torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(list(models)[0], torch.tensor([1.5, 1.0]))
    assert [m.tolist() for m in models[0:2]] == [[1.5, 1.0], [1.0, 5.0]]
