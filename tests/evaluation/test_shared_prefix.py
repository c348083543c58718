"""Each distinct context run once for all its continuations gives lm-eval's own answers: the same
log-probabilities (to float rounding), the same greedy flags, in request order, through the cache hook; and
lm-eval's loop takes over where the shortcut does not apply."""

from __future__ import annotations

import pytest
import torch

from evaluation import EvaluationCancelled, load_model, shared_prefix
from evaluation.prepared import wrap_model
from tests.tiny_models import make_base, make_finetune


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared-prefix")
    base = make_base(root / "base", seed=3)
    return load_model(make_finetune(base, root / "ft", seed=4, scale=0.5))


def _requests():
    """Contexts of several lengths, shared by continuations of 1 to 4 tokens; one context repeated under
    another key; one context that is a prefix of another."""
    g = torch.Generator().manual_seed(0)

    def toks(n: int) -> list[int]:
        return torch.randint(4, 30, (n,), generator=g).tolist()

    reqs = []
    for ctx_len in (1, 3, 3, 7, 12):
        ctx = toks(ctx_len)
        for cont_len in (1, 2, 4, 1, 3):
            cont = toks(cont_len)
            reqs.append(((f"c{len(reqs)}", f"x{len(reqs)}"), ctx, cont))
    reqs.append((("again", "x"), reqs[7][1], reqs[7][2]))  # same tokens, another request
    reqs.append((None, reqs[7][1] + reqs[7][2], [5]))  # a continuation of a longer context
    return reqs


def _plain(loaded, reqs, batch):
    """lm-eval's HFLM loop, unchanged."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch)
    return lm._loglikelihood_tokens(reqs, disable_tqdm=True)


class _Hook:
    def __init__(self) -> None:
        self.seen = []

    def add_partial(self, kind, key, answer) -> None:
        self.seen.append((kind, key, answer))


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_same_answers_as_lm_eval(loaded, batch):
    reqs = _requests()
    lm = wrap_model(loaded.model, loaded.tokenizer, batch)
    assert shared_prefix.applies(lm, reqs)
    lm.cache_hook = _Hook()
    ours = shared_prefix.loglikelihoods(lm, reqs)
    theirs = _plain(loaded, reqs, batch)
    assert [g for _, g in ours] == [g for _, g in theirs]
    torch.testing.assert_close(
        torch.tensor([v for v, _ in ours]), torch.tensor([v for v, _ in theirs]), rtol=1e-5, atol=1e-5
    )
    keyed = [(r[0], a) for r, a in zip(reqs, ours, strict=True) if r[0] is not None]
    assert [(k, a) for _, k, a in lm.cache_hook.seen] == keyed


def test_greedy_flag_set_when_the_model_predicts_the_continuation(loaded):
    """A continuation built from the model's own argmax is greedy; changing its last token makes it not."""
    lm = wrap_model(loaded.model, loaded.tokenizer, 4)
    ctx = [5, 9, 11]
    cont = []
    with torch.no_grad():
        for _ in range(3):
            logits = loaded.model(torch.tensor([ctx + cont])).logits[0, -1]
            cont.append(int(logits.argmax()))
    wrong = cont[:-1] + [(cont[-1] + 1) % 30 + 4]
    (_, greedy), (_, not_greedy) = shared_prefix.loglikelihoods(lm, [(None, ctx, cont), (None, ctx, wrong)])
    assert greedy and not not_greedy


def test_too_long_requests_go_through_lm_eval(loaded):
    """A request that lm-eval would truncate is not the shortcut's: the whole call uses lm-eval's loop."""
    lm = wrap_model(loaded.model, loaded.tokenizer, 4)
    long_ctx = [7] * lm.max_length
    reqs = [(None, long_ctx, [5, 6]), (None, [5, 6], [7])]
    assert not shared_prefix.applies(lm, reqs)
    assert lm._loglikelihood_tokens(reqs) == _plain(loaded, reqs, 4)


def test_cancel_before_a_forward_pass(loaded):
    lm = wrap_model(loaded.model, loaded.tokenizer, 4)
    with pytest.raises(EvaluationCancelled):
        shared_prefix.loglikelihoods(lm, _requests(), should_cancel=lambda: True)
