"""The paper's published numbers (paper.md §1.6, Hitit et al., arXiv 2511.21437), as data.

These are the PAPER's figures, transcribed from its Tables 1-3, for drawing beside a user's own results;
nothing here is computed by MergeLab. Cells are success probability P_n (percent) and mean gain G_n
(percentage points of the 16-task mean accuracy), k_n subsets per n (12 single checkpoints at n=1, 15 subsets
at n=2..10, the one full set at n=12).
"""

from __future__ import annotations

import pandas as pd

SOURCE = "Hitit, Girrbach, Akata: A Systematic Study of Model Merging Techniques in LLMs (arXiv 2511.21437)"
SUBSETS_PER_N = {1: 12, 2: 15, 4: 15, 6: 15, 8: 15, 10: 15, 12: 1}
BASE_ACCURACY = {"Llama-3B": 50.3, "Llama-8B": 56.9, "Qwen-4B": 55.3, "Qwen-8B": 58.8, "Average": 55.3}
BEST_FT_ACCURACY = {"Llama-3B": 50.4, "Llama-8B": 59.0, "Qwen-4B": 54.5, "Qwen-8B": 58.1, "Average": 55.5}
BASE_MODELS = {
    "Llama-3B": "meta-llama/Llama-3.2-3B-Instruct",
    "Llama-8B": "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen-4B": "Qwen/Qwen3-4B",
    "Qwen-8B": "Qwen/Qwen3-8B",
    "Average": None,
}

_NS = (1, 2, 4, 6, 8, 10, 12)

# Table 1, TA family vs base: model | method | cells n=1..12
_TABLE1 = """
Llama-3B|TA|17/-0.85 20/-0.27 80/+0.39 100/+0.64 100/+0.66 100/+0.68 100/+0.89
Llama-3B|Model Stock|17/-0.85 60/+0.01 87/+0.02 87/+0.05 100/+0.05 93/+0.07 100/+0.09
Llama-3B|TIES|17/-0.85 20/-0.65 20/-0.64 20/-0.49 7/-0.54 13/-0.56 0/-0.23
Llama-8B|TA|25/-1.28 60/+0.38 93/+1.05 100/+1.36 100/+1.60 100/+1.62 100/+1.56
Llama-8B|Model Stock|25/-1.28 93/+0.06 100/+0.19 100/+0.30 100/+0.35 100/+0.32 100/+0.36
Llama-8B|TIES|25/-1.28 47/-0.78 13/-3.27 0/-4.85 13/-5.84 0/-6.94 0/-8.32
Qwen-4B|TA|25/-1.34 47/-0.09 80/+0.17 100/+0.44 100/+0.64 100/+0.76 100/+0.88
Qwen-4B|Model Stock|25/-1.34 13/-0.01 20/-0.02 47/-0.01 27/-0.01 27/-0.01 100/+0.01
Qwen-4B|TIES|25/-1.34 27/-0.29 0/-1.27 0/-1.40 0/-2.22 0/-2.26 0/-3.33
Qwen-8B|TA|33/-0.97 67/-0.09 100/+0.39 100/+0.50 100/+0.56 100/+0.67 100/+0.74
Qwen-8B|Model Stock|33/-0.97 47/+0.01 100/+0.04 93/+0.03 100/+0.03 100/+0.05 100/+0.05
Qwen-8B|TIES|33/-0.97 40/-0.78 13/-1.83 0/-3.95 0/-4.47 0/-4.35 0/-5.38
Average|TA|25/-1.11 49/-0.02 88/+0.50 100/+0.74 100/+0.87 100/+0.93 100/+1.02
Average|Model Stock|25/-1.11 53/+0.02 77/+0.06 82/+0.09 82/+0.10 80/+0.11 100/+0.13
Average|TIES|25/-1.11 31/-0.63 12/-1.74 5/-2.67 5/-3.27 3/-3.53 0/-4.32
"""

# Table 2, TA vs the "best fine-tuned checkpoint" (its definition is unconfirmed, see paper.md §1.5)
_TABLE2 = """
Llama-3B|TA|17/-0.92 20/-0.34 80/+0.32 100/+0.58 100/+0.60 100/+0.62 100/+0.82
Llama-8B|TA|17/-3.41 13/-1.76 0/-1.09 0/-0.78 0/-0.54 0/-0.52 0/-0.58
Qwen-4B|TA|75/-0.50 93/+0.76 100/+1.02 100/+1.28 100/+1.48 100/+1.60 100/+1.72
Qwen-8B|TA|67/-0.22 80/+0.66 100/+1.14 100/+1.25 100/+1.32 100/+1.42 100/+1.49
Average|TA|44/-1.22 52/+0.08 70/+0.60 75/+0.84 75/+0.97 75/+1.03 75/+1.13
"""

# Table 3, subspace methods vs base; its n=1 column is Table 1's (the single checkpoints)
_TABLE3 = """
Llama-3B|TA+SB|17/-0.85 13/-1.74 67/+0.22 60/-0.90 87/+0.50 100/+0.77 100/+1.22
Llama-3B|TIES+SB|17/-0.85 13/-0.94 13/-1.22 0/-1.71 0/-1.62 0/-1.80 0/-1.62
Llama-3B|TSV-M|17/-0.85 27/-0.74 47/-0.34 27/-0.54 47/-0.03 27/-0.20 0/-0.33
Llama-3B|Iso-C|17/-0.85 33/-0.30 47/-0.39 20/-0.98 13/-0.99 0/-1.81 0/-2.48
Llama-8B|TA+SB|25/-1.28 27/-3.10 67/-8.55 87/+0.72 100/+1.79 100/+1.81 100/+1.83
Llama-8B|TIES+SB|25/-1.28 40/-2.47 13/-6.57 0/-9.21 0/-10.82 0/-12.45 0/-14.65
Llama-8B|TSV-M|25/-1.28 33/-1.90 20/-2.39 7/-2.92 13/-2.70 0/-3.36 0/-3.79
Llama-8B|Iso-C|25/-1.28 53/-0.65 40/-1.19 27/-2.77 20/-3.60 0/-5.94 0/-8.84
Qwen-4B|TA+SB|25/-1.34 33/-5.90 33/-0.77 47/-0.22 87/+0.28 93/+0.49 100/+0.61
Qwen-4B|TIES+SB|25/-1.34 13/-1.06 0/-3.07 0/-3.59 0/-5.45 0/-5.75 0/-8.16
Qwen-4B|TSV-M|25/-1.34 13/-0.98 7/-1.95 0/-1.50 7/-1.91 0/-1.69 0/-2.04
Qwen-4B|Iso-C|25/-1.34 27/-0.62 7/-3.05 0/-3.03 7/-4.58 0/-4.96 0/-6.95
Qwen-8B|TA+SB|33/-0.97 20/-7.95 67/-3.10 60/-1.07 67/-0.84 100/+0.51 100/+0.60
Qwen-8B|TIES+SB|33/-0.97 13/-1.99 7/-3.47 0/-7.40 0/-8.83 0/-7.92 0/-10.26
Qwen-8B|TSV-M|33/-0.97 13/-2.03 13/-2.33 0/-3.21 0/-3.26 0/-3.32 0/-3.28
Qwen-8B|Iso-C|33/-0.97 20/-0.30 27/-0.35 0/-1.10 0/-1.64 0/-2.23 0/-3.16
Average|TA+SB|25/-1.11 23/-4.52 58/-2.55 63/-0.37 86/+0.43 98/+0.89 100/+1.07
Average|TIES+SB|25/-1.11 20/-1.61 8/-3.58 0/-5.99 0/-6.68 0/-7.44 0/-8.67
Average|TSV-M|25/-1.11 22/-1.41 22/-1.75 8/-2.04 17/-2.00 7/-2.14 0/-2.36
Average|Iso-C|25/-1.11 33/-0.47 30/-1.23 12/-1.97 10/-2.70 0/-3.73 0/-5.36
"""

# The paper's method names mapped to MergeLab's method registry names (methods.md).
METHOD_IDS = {
    "TA": "task_arithmetic",
    "TIES": "ties",
    "Model Stock": "model_stock",
    "TA+SB": "task_arithmetic_sb",
    "TIES+SB": "ties_sb",
    "TSV-M": "tsvm",
    "Iso-C": "iso_c",
}


def paper_results() -> pd.DataFrame:
    """The paper's Tables 1-3 as one tidy frame, one row per (table, model, method, n).

    Columns: source ("paper"), table (1, 2, 3), model ("Llama-3B", …, "Average"), base_model (HF id or None
    for the average), method (paper name), method_id (MergeLab name), reference ("base" or "best_ft"),
    reference_accuracy (the base's or best FT's 16-task mean, percent), n, k (subsets), success (percent),
    gain (percentage points).
    """
    rows = []
    for table, text, reference in ((1, _TABLE1, "base"), (2, _TABLE2, "best_ft"), (3, _TABLE3, "base")):
        for line in text.strip().splitlines():
            model, method, cells = line.split("|")
            for n, cell in zip(_NS, cells.split(), strict=True):
                success, gain = cell.split("/")
                ref = BASE_ACCURACY if reference == "base" else BEST_FT_ACCURACY
                rows.append(
                    {
                        "source": "paper",
                        "table": table,
                        "model": model,
                        "base_model": BASE_MODELS[model],
                        "method": method,
                        "method_id": METHOD_IDS[method],
                        "reference": reference,
                        "reference_accuracy": ref[model],
                        "n": n,
                        "k": SUBSETS_PER_N[n],
                        "success": float(success),
                        "gain": float(gain),
                    }
                )
    return pd.DataFrame(rows)


def paper_accuracies() -> pd.DataFrame:
    """The paper's base and best-FT 16-task mean accuracies (percent) per base model."""
    return pd.DataFrame(
        [
            {
                "model": m,
                "base_model": BASE_MODELS[m],
                "base": BASE_ACCURACY[m],
                "best_ft": BEST_FT_ACCURACY[m],
            }
            for m in BASE_ACCURACY
        ]
    )
