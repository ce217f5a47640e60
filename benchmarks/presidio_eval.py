#!/usr/bin/env python3
"""Microsoft Presidio's analyzer on Palisade's labelled corpus, scored the
same way as `palisade dlp-eval`: a finding counts when it overlaps a gold
span of the same entity.

    ./target/release/palisade dlp-eval --corpus-out /tmp/corpus.jsonl
    python3 -m venv .presidio && .presidio/bin/pip install presidio-analyzer
    .presidio/bin/python benchmarks/presidio_eval.py /tmp/corpus.jsonl

spaCy's language models are not on PyPI; when none is installed the script
runs Presidio with a blank English pipeline (its pattern recognizers work;
its PERSON recognizer, which needs a model's named-entity recognition,
finds nothing) and says so.
"""

import json
import sys
import time
from collections import defaultdict

# Presidio entity → Palisade entity.
MAP = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "US_SSN": "US_SSN",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS",
    "PERSON": "PERSON",
    "US_PASSPORT": "US_PASSPORT",
    "US_DRIVER_LICENSE": "US_DRIVER_LICENSE",
    "MEDICAL_LICENSE": "MEDICAL_RECORD_NUMBER",
    "DATE_TIME": "DATE_OF_BIRTH",
}


def engine():
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    import spacy

    for model in ("en_core_web_lg", "en_core_web_md", "en_core_web_sm"):
        if spacy.util.is_package(model):
            return AnalyzerEngine(), model
    path = "/tmp/palisade-blank-en"
    spacy.blank("en").to_disk(path)
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": path}],
    })
    return AnalyzerEngine(nlp_engine=provider.create_engine()), "blank (no NER model installed)"


def main():
    analyzer, model = engine()
    samples = [json.loads(line) for line in open(sys.argv[1])]
    counts = defaultdict(lambda: [0, 0, 0])  # tp, fp, fn
    started = time.time()
    nbytes = 0
    for s in samples:
        text = s["text"]
        nbytes += len(text.encode())
        found = [(MAP.get(r.entity_type), r.start, r.end) for r in analyzer.analyze(text=text, language="en")]
        found = [f for f in found if f[0]]
        gold = [(g["entity"], g["char_start"], g["char_end"]) for g in s["spans"]]
        overlaps = lambda a, b: a[1] < b[2] and b[1] < a[2]
        for g in gold:
            if g[0] not in MAP.values():
                continue
            counts[g[0]][0 if any(f[0] == g[0] and overlaps(f, g) for f in found) else 2] += 1
        for f in found:
            if not any(g[0] == f[0] and overlaps(f, g) for g in gold):
                counts[f[0]][1] += 1
    elapsed = time.time() - started
    print(f"Presidio {__import__('presidio_analyzer').__version__ if hasattr(__import__('presidio_analyzer'), '__version__') else ''}, spaCy model: {model}")
    print(f"{len(samples)} samples ({nbytes // 1024} KiB) in {elapsed:.1f} s ({nbytes / elapsed / 1e6:.3f} MB/s)\n")
    print("| entity | precision | recall | F1 | TP | FP | FN |")
    print("|---|---|---|---|---|---|---|")
    for e in sorted(counts):
        tp, fp, fn = counts[e]
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        print(f"| {e} | {p:.3f} | {r:.3f} | {f1:.3f} | {tp} | {fp} | {fn} |")


if __name__ == "__main__":
    main()
