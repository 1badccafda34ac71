"""Write calib.npz / eval.npz of REAL English sentences tokenized for all-MiniLM-L6-v2.

Usage: python sample_models/text_encoder/prepare.py

Text: the Python Language Reference as shipped in every CPython install
(``pydoc_data.topics``, the text behind ``help('TOPIC')``): real prose, no download.
Sentences of 6..40 words are split off each topic; topics sorted by name are
dealt alternately to calibration and evaluation, so the two sets share no topic
(and no sentence). The chosen sentences are written to ``sentences.txt`` too, so
the tokenization can be audited and reproduced on another Python version.

Writes next to this file:
  calib.npz  input_ids, attention_mask: int64 (200, 32)
  eval.npz   input_ids, attention_mask: int64 (400, 32)   (no labels: an encoder)
  sentences.txt  "calib<TAB>sentence" / "eval<TAB>sentence", in npz order
"""

import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import tokenizer  # noqa: E402

N_CALIB = 200
N_EVAL = 400
MIN_WORDS, MAX_WORDS = 6, 40


def topic_sentences(text: str) -> list[str]:
    # prose lines only: skip indented code/grammar blocks and tables
    prose = " ".join(line.strip() for line in text.splitlines()
                     if line.strip() and not line.startswith(("   ", "\t", "+", "=", "*")))
    out = []
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", prose):
        s = " ".join(s.split())
        words = s.split()
        letters = sum(c.isalpha() for c in s)
        if MIN_WORDS <= len(words) <= MAX_WORDS and letters > 0.7 * len(s) and s[-1] in ".!?":
            out.append(s)
    return out


def split_sentences() -> tuple[list[str], list[str]]:
    from pydoc_data.topics import topics

    calib, evals, seen = [], [], set()
    for i, key in enumerate(sorted(topics)):
        pool = calib if i % 2 == 0 else evals
        for s in topic_sentences(topics[key]):
            if s not in seen:
                seen.add(s)
                pool.append(s)
    return spread(calib, N_CALIB), spread(evals, N_EVAL)


def spread(items: list[str], n: int) -> list[str]:
    """n items evenly spaced over the list (deterministic, covers every topic range)."""
    if len(items) < n:
        raise SystemExit(f"only {len(items)} sentences, need {n}")
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def encode(sentences: list[str]) -> dict[str, np.ndarray]:
    enc = tokenizer().encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


def main() -> None:
    calib, evals = split_sentences()
    np.savez_compressed(os.path.join(HERE, "calib.npz"), **encode(calib))
    np.savez_compressed(os.path.join(HERE, "eval.npz"), **encode(evals))
    with open(os.path.join(HERE, "sentences.txt"), "w", encoding="utf-8") as f:
        for tag, items in (("calib", calib), ("eval", evals)):
            f.writelines(f"{tag}\t{s}\n" for s in items)
    lengths = encode(evals)["attention_mask"].sum(1)
    print(f"calib {len(calib)}, eval {len(evals)} sentences; eval tokens per sentence: "
          f"median {int(np.median(lengths))}, truncated at 32: {(lengths == 32).mean():.0%}")


if __name__ == "__main__":
    main()
