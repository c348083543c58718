"""Run the config corpus (tests/merging/corpus) through MergeLab and through mergekit 0.1.5, side by side.

Prints, per config, whether each tool ran it (or its one-line error) and, where both ran, the worst relative
difference max|ours − theirs| / max|theirs| over all tensors. The differences are measured on a float32
variant of each config (`dtype: float32`, no `out_dtype`), because mergekit computes in the config's
dtype (often bfloat16) and MergeLab always computes in float32; randomized methods (DARE, DELLA) draw
other masks in each tool and are shown as "random". mergekit lives in a throwaway virtualenv (never a
MergeLab dependency):

    python3 -m venv /work/mk-venv && /work/mk-venv/bin/pip install torch==2.13.0 mergekit==0.1.5
    .venv/bin/python bench/mergekit_corpus.py --mergekit-python /work/mk-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mergekit import load_dir  # noqa: E402

from merging import DirectorySink, MergeError, Recipe, run_merge  # noqa: E402
from tests.merging.corpus_family import build_corpus_family, config_text, corpus_files  # noqa: E402

RANDOMIZED = {"dare_ties", "dare_linear", "della", "della_linear"}

# Runs inside mergekit's virtualenv: every config in one process, one JSON line per config.
MERGEKIT_DRIVER = r"""
import json, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
options = MergeOptions(device="cpu", quiet=True, copy_tokenizer=True)
for cfg, out in json.loads(sys.argv[1]):
    text = open(cfg).read()
    try:
        run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), out, options, config_source=text)
        row = {"cfg": cfg, "ok": True}
    except Exception as e:
        row = {"cfg": cfg, "ok": False, "error": (type(e).__name__ + ": " + " ".join(str(e).split()))[:160]}
    print(json.dumps(row), flush=True)
"""


def float32_variant(text: str) -> str:
    doc = yaml.safe_load(text)
    doc["dtype"] = "float32"
    doc.pop("out_dtype", None)
    return yaml.safe_dump(doc, sort_keys=False)


def ours(cfg: Path, out: Path) -> str | None:
    try:
        run_merge(Recipe.from_yaml(cfg), DirectorySink(out), device="cpu")
        return None
    except MergeError as exc:
        return " ".join(str(exc).split())[:160]


def worst_difference(a_dir: Path, b_dir: Path) -> tuple[float, float] | str:
    """(worst relative difference, fraction of entries off by more than 1e-5 relative) or why not."""
    a, b = load_dir(a_dir), load_dir(b_dir)
    if set(a) != set(b):
        return f"tensor sets differ: {sorted(set(a) ^ set(b))[:3]}"
    worst, off, total = 0.0, 0, 0
    for k in a:
        x, y = a[k].double(), b[k].double()
        if x.shape != y.shape:
            return f"{k}: shapes {tuple(x.shape)} vs {tuple(y.shape)}"
        scale = y.abs().max().clamp_min(1e-12)
        diff = (x - y).abs()
        worst = max(worst, float(diff.max() / scale))
        off += int((diff > 1e-5 * scale).sum())
        total += diff.numel()
    return worst, off / max(total, 1)


def _rendered(tok) -> str | None:
    """A sample conversation through the tokenizer's chat template (None without one)."""
    if not tok.chat_template:
        return None
    chat = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": " u "},
        {"role": "assistant", "content": "a"},
    ]
    return tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def same_output_files(a_dir: Path, b_dir: Path) -> str:
    """What the two outputs disagree on besides tensor values: layer count, vocabulary size, tokenizer
    vocabulary, chat template, tensor dtypes ("same" when nothing)."""
    from transformers import AutoTokenizer

    out = []
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a_dir, b_dir))
    for key in ("num_hidden_layers", "vocab_size"):
        if ca.get(key) != cb.get(key):
            out.append(f"{key} {ca.get(key)} vs {cb.get(key)}")
    ta, tb = (AutoTokenizer.from_pretrained(str(d)) for d in (a_dir, b_dir))
    if ta.get_vocab() != tb.get_vocab():
        out.append("tokenizer vocabulary")
    if _rendered(ta) != _rendered(tb):
        out.append("chat template")
    da = {k: v.dtype for k, v in load_dir(a_dir).items()}
    db = {k: v.dtype for k, v in load_dir(b_dir).items()}
    if da != db:
        out.append(f"dtypes {sorted(set(map(str, da.values())))} vs {sorted(set(map(str, db.values())))}")
    return "; ".join(out) or "same"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--mergekit-python", default=os.environ.get("MERGEKIT_PYTHON", "/work/mk-venv/bin/python")
    )
    ap.add_argument("-k", default="", help="only configs whose file name contains this")
    args = ap.parse_args()
    files = [f for f in corpus_files() if args.k in f.name]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = build_corpus_family(work / "models")
        jobs = []
        for f in files:
            text = config_text(f, root)
            (work / f"{f.stem}.yml").write_text(text)
            (work / f"{f.stem}.f32.yml").write_text(float32_variant(text))
            jobs += [(f.stem, "asis", work / f"{f.stem}.yml"), (f.stem, "f32", work / f"{f.stem}.f32.yml")]
        pairs = [[str(cfg), str(work / f"mk-{stem}-{kind}")] for stem, kind, cfg in jobs]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(
            [args.mergekit_python, "-c", MERGEKIT_DRIVER, json.dumps(pairs)],
            env=env,
            capture_output=True,
            text=True,
        )
        mk = {}
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                mk[row["cfg"]] = row
        if not mk:
            sys.exit(f"error: mergekit driver produced nothing: {proc.stderr.strip().splitlines()[-1:]}")
        print(
            "| config | method | mergekit | MergeLab | worst rel. diff (float32) | entries > 1e-5 | files |"
        )
        print("|---|---|---|---|---|---|---|")
        n_mk = n_ours = n_both = n_same_files = 0
        worst_all = 0.0
        for f in files:
            method = yaml.safe_load(f.read_text())["merge_method"]
            cfg, cfg32 = work / f"{f.stem}.yml", work / f"{f.stem}.f32.yml"
            mk_row = mk.get(str(cfg), {"ok": False, "error": "no result"})
            our_err = ours(cfg, work / f"ours-{f.stem}-asis")
            n_mk += mk_row["ok"]
            n_ours += our_err is None
            diff, frac, meta = "—", "—", "—"
            if mk_row["ok"] and our_err is None:
                n_both += 1
                meta = same_output_files(work / f"ours-{f.stem}-asis", work / f"mk-{f.stem}-asis")
                n_same_files += meta == "same"
                if method in RANDOMIZED:
                    diff = "random"
                elif ours(cfg32, work / f"ours-{f.stem}-f32") is None and mk.get(str(cfg32), {}).get("ok"):
                    got = worst_difference(work / f"ours-{f.stem}-f32", work / f"mk-{f.stem}-f32")
                    if isinstance(got, str):
                        diff = got
                    else:
                        worst_all = max(worst_all, got[0])
                        diff, frac = f"{got[0]:.2e}", f"{got[1]:.1e}"
            mk_cell = "ok" if mk_row["ok"] else f"refused: {mk_row.get('error', '')[:70]}"
            our_cell = "ok" if our_err is None else f"refused: {our_err[:70]}"
            print(f"| {f.stem} | {method} | {mk_cell} | {our_cell} | {diff} | {frac} | {meta} |")
        print(
            f"\n{len(files)} configs: mergekit ran {n_mk}, MergeLab ran {n_ours}, both {n_both}; "
            f"worst relative difference over deterministic configs both ran: {worst_all:.2e}; "
            f"same layer count, vocabulary, tokenizer, chat template and dtypes: {n_same_files} of {n_both}"
        )


if __name__ == "__main__":
    main()
