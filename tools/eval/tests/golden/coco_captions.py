"""Writes coco_captions.json: what pycocoevalcap (the scorer ScanQA's score.py uses) computes on a
set of ScanQA-like answers, for tools/eval/tests/caption_golden.rs.

Run by hand, not in CI (needs `pip install pycocoevalcap` and Java for its PTBTokenizer):
    python3 tools/eval/tests/golden/coco_captions.py
It records, for every string, the tokens of the Java PTBTokenizer (CoreNLP 3.4.1, -preserveLines
-lowerCase, punctuation tokens dropped), and the corpus scores BLEU-1..4, ROUGE-L, CIDEr(-D) with the
per-question ROUGE-L and CIDEr, on the tokenized text, exactly as score.py feeds them.
"""
import json
import pathlib
import random

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

colours = ["brown", "white", "black", "dark blue", "light grey", "red"]
objects = ["chair", "table", "desk", "sofa", "tv", "cabinet", "trash can", "bed", "kitchen counter"]
places = [
    "on the left side of the table",
    "under the desk",
    "next to the bed",
    "in the corner of the room",
    "to the right of the door",
    "behind the couch",
]
tricky = [
    "It's the chair's leg.",
    "the T-shirt (white) on the bed!",
    "don't know",
    "2 chairs, 1 table; and a sofa...",
    "\"quoted\" answer",
    "  Extra   spaces  ",
    "rectangular/square",
    "3.5 m",
    "it is a 24-inch monitor",
    "Left",
    "couch's cushions aren't blue",
    "o'clock",
    "cafe - kitchen -- area",
    "{braces} [brackets]",
    "a,b",
    "ScanNet's scene0000_00",
    "",
]

# Strings for the tokenizer alone (not scored).
tokenizer_only = [
    "1,000 at 10:30 or 3.5", "\"quoted\" 'single'", "u.s. army", "chairs' legs", "-5 degrees",
    "e.g. a chair", "I'm", "they're here", "we'll", "you've", "he'd", "can't", "won't", "cannot",
    "gonna", "wanna", "gotta go", "lemme see", "gimme that", "It's 5 o'clock.", "3-4 chairs",
    "the chair/desk", "left-hand side", "5'6\"", "$20", "50%", "tv&monitor", "a.m.", "end.",
    "Mr. Smith", "Mrs. Brown", "St.", "the end etc.", "No.", "no. it is", "it is no. 5", "Yes.",
    "#1", "x--y", "a - b", "???", "?!", "!!!", "?", "...", "wait...what", "www.example.com", "'s",
    "dogs'", "DON'T", "isn't it", "'90s", "5'", "(a)", "[x]", "{y}", "<b>", "a=b", "a+b", "~5",
    "*star*", "under_score", "@home", "a|b", "café", "NAÏVE", "towel-rack", "back-rest.",
    "y'all", "rock'n'roll", "'tis", "ma'am",
]

rng = random.Random(7)
questions = []
for i in range(48):
    kind = i % 4
    if kind == 0:
        refs = rng.sample(colours, rng.randint(1, 3))
        cand = rng.choice(colours + ["", "blue"])
    elif kind == 1:
        refs = [rng.choice(places)] + ([rng.choice(places)] if rng.random() < 0.5 else [])
        cand = rng.choice(places + ["on the table", "left"])
    elif kind == 2:
        refs = [rng.choice(objects)]
        cand = rng.choice(objects + ["the " + rng.choice(objects)])
    else:
        refs = [str(rng.randint(1, 4))] + (["two"] if rng.random() < 0.3 else [])
        cand = rng.choice(["2", "3", "two", "1"])
    questions.append({"question_id": f"val-scene{i:04d}-{i % 3}", "candidate": cand, "answers": refs})
for j, t in enumerate(tricky):
    questions.append(
        {"question_id": f"val-tricky-{j}", "candidate": t, "answers": [tricky[(j + 1) % len(tricky)] or "none", t or "empty"]}
    )

gts = {q["question_id"]: [{"caption": a} for a in q["answers"]] for q in questions}
res = {q["question_id"]: [{"caption": q["candidate"]}] for q in questions}
tok = PTBTokenizer()
gts_t = tok.tokenize(gts)
res_t = tok.tokenize(res)

tok_only = tok.tokenize({str(i): [{"caption": x}] for i, x in enumerate(tokenizer_only)})

bleu, _ = Bleu(4).compute_score(gts_t, res_t, verbose=0)
rouge, rouge_each = Rouge().compute_score(gts_t, res_t)
cider, cider_each = Cider().compute_score(gts_t, res_t)

out = {
    "generator": "pycocoevalcap 1.2 (PTBTokenizer: stanford-corenlp-3.4.1.jar)",
    "questions": [
        {
            **q,
            "candidate_tokens": res_t[q["question_id"]][0],
            "answers_tokens": gts_t[q["question_id"]],
        }
        for q in questions
    ],
    "tokenizer_only": [[x, tok_only[str(i)][0]] for i, x in enumerate(tokenizer_only)],
    "bleu": list(bleu),
    "rouge_l": float(rouge),
    "rouge_l_each": [float(x) for x in rouge_each],
    "cider": float(cider),
    "cider_each": [float(x) for x in cider_each],
}
path = pathlib.Path(__file__).with_name("coco_captions.json")
path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
print(f"wrote {path}: {len(questions)} questions, BLEU {bleu}, ROUGE-L {rouge}, CIDEr {cider}")
