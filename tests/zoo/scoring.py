"""Private, fast multiple-choice scoring for checking the zoo's task design: the same rule as lm-eval's
`acc` (argmax over summed loglikelihood of each choice continuing the query, target_delimiter ""), but
batched in plain torch with no harness start-up, so tuning runs take seconds."""

from __future__ import annotations

import torch

from zoo.tokenizer import encode


@torch.no_grad()
def mc_accuracy(model, items: list[tuple[str, str, list[str]]]) -> float:
    """Accuracy of `model` on (query, gold, distractors) items; choices are gold + distractors."""
    model.eval()
    rows, spans, n_choices = [], [], []
    for q, gold, distractors in items:
        choices = [gold, *distractors]
        n_choices.append(len(choices))
        for c in choices:
            qi, ci = encode(q), encode(c)
            rows.append(qi + ci)
            spans.append((len(qi), len(ci)))
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    scores = []
    for start in range(0, len(rows), 512):
        logp = torch.log_softmax(model(input_ids=ids[start : start + 512]).logits.float(), -1)
        for j in range(logp.shape[0]):
            qlen, clen = spans[start + j]
            tgt = ids[start + j, qlen : qlen + clen]
            scores.append(logp[j, qlen - 1 : qlen - 1 + clen].gather(-1, tgt[:, None]).sum().item())
    correct, k = 0, 0
    for n in n_choices:
        block = scores[k : k + n]
        correct += int(max(range(n), key=block.__getitem__) == 0)
        k += n
    return correct / len(n_choices)
