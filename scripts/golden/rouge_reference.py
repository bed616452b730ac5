#!/usr/bin/env python3
"""ROUGE references for tests/unit/summarize_test.cc (Rouge.MatchesRougeScore): the precision,
recall and F-measure of each case under Google's rouge_score (pip install rouge_score), scored as
Hugging Face evaluate's "rouge" scores by default (no stemmer), printed with repr().
Usage: python3 scripts/golden/rouge_reference.py
"""
from rouge_score import rouge_scorer

# (prediction, reference), in the order of the test's cases.
CASES = [
    ("The cat sat on the mat.\nIt was happy.", "the cat was on the mat\nthe cat was happy"),
    ("Police say 3 men were arrested in Paris on Monday.\nThe men, aged 20-25, face charges.",
     "Three men arrested in Paris, police say .\nThey are aged between 20 and 25 .\n"
     "Charges are expected on Monday ."),
    ("a b a c a b\n\nc a b", "a b c\na a b b\nc"),
    ("", "Anything at all."),
    ("No overlap here", "Something else entirely"),
    ("Caf\u00e9 d\u00e9j\u00e0 vu, 100%!", "cafe deja vu 100"),
]
TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def main():
    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=False)
    for prediction, reference in CASES:
        scores = scorer.score(reference, prediction)
        print(repr(prediction))
        for name in TYPES:
            score = scores[name]
            print(f"  {name}: {score.precision!r}, {score.recall!r}, {score.fmeasure!r}")


if __name__ == "__main__":
    main()
