"""Generate leo_answers.json: golden outputs of LEO's official answer normalisation and matching.

The expected values are produced by the official Python code of
embodied-generalist/embodied-generalist at commit 5e9a87623a58e6bcfa40bee62cfd073b085e1a2b
(`data/data_utils.py`: clean_answer, get_sqa_question_type; `evaluator/scanqa_eval.py`:
ScanQAEvaluator.answer_match, which evaluator/sqa3d_eval.py inherits). This script contains no
copy of that code: it imports it from a directory laid out like the repository root.

How it was run (Python 3.11.7):

    # /tmp/leo_official/data/data_utils.py and /tmp/leo_official/evaluator/scanqa_eval.py hold
    # the official files' text as fetched from GitHub at the commit above (trimmed to their import
    # headers and the functions named above, otherwise verbatim)
    python3 tools/eval/tests/golden/leo_answers.py /tmp/leo_official > tools/eval/tests/golden/leo_answers.json

The heavy third-party imports at the top of those files (torch, numpy, cv2, open3d, ...) and the
repository-internal scorer modules are replaced by empty stub modules, because the functions under
test use only `re` and `str`.

Each answer-match case is scored the way `ScanQAEvaluator.batch_metrics` does it: the prediction
and every ground truth go through clean_answer, then answer_match(pred, gts) gives (EM, refined EM).
"""

import json
import sys
import types


def stub_modules():
    """Install empty modules for every import the two official files make besides `re`."""

    class Registry:
        def register(self):
            return lambda cls: cls

    names = [
        "cv2", "numpy", "open3d", "quaternion", "torch", "trimesh", "scipy", "scipy.spatial",
        "scipy.spatial.transform", "evaluator.build", "evaluator.ngram_metrics",
        "evaluator.ngram_metrics.bleu", "evaluator.ngram_metrics.bleu.bleu",
        "evaluator.ngram_metrics.cider", "evaluator.ngram_metrics.cider.cider",
        "evaluator.ngram_metrics.meteor", "evaluator.ngram_metrics.meteor.meteor",
        "evaluator.ngram_metrics.rouge", "evaluator.ngram_metrics.rouge.rouge",
    ]
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["scipy.spatial.transform"].Rotation = object
    sys.modules["evaluator.build"].EVALUATOR_REGISTRY = Registry()
    for metric in ["Bleu", "Cider", "Meteor", "Rouge"]:
        module = f"evaluator.ngram_metrics.{metric.lower()}.{metric.lower()}"
        setattr(sys.modules[module], metric, object)


CLEAN_CASES = [
    # case and spaces
    "Brown", "BROWN CHAIR", "  brown  ", "brown   chair", "brown \t chair", "\tbrown",
    "brown\n", "brown  \n", "brown \n ", "", " ", "   ", "\n",
    # punctuation outside [a-zA-Z0-9,'\s\-:]
    "chair.", "chair ?", "chair . table", " ?chair", "It's a chair!", "left, right",
    "left-hand side", "10:30", "(box)", "a/b", "50%", "#2", "under_score", "1.5", "0.5",
    "-1", "1,2", "what's that?", "\u201cquoted\u201d", "o\u2019clock",
    # typo table
    "letf", "LETF side", "let", "let's go", "outlet", "tehre", "rigth", "rght", "behine",
    "chai", "chai2", "wasing machine", "waslked", "oclock", "3 oclock", "o' clock",
    "o'  clock", "2 o' clock", "o'clock", "O' Clock",
    # tv
    "tv", "TV", "tv stand", "the tv", "a tv", "tvs", "tv2", "tv-stand",
    # numbers
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "100", "007", "none", "None", "nonetheless",
    "2 chairs", "one 1", "1 2 3",
    # word+digit tokens
    "chair2", "chair12", "chair 2", "a1b2", "no1", "mat2", "2chair", "chair2 table3",
    "chair2.", "x9",
    # articles
    "a chair", "an apple", "the table", "The Table", "the the chair", "a a chair",
    "a the chair", "the a chair", "the 2", "a 2", "a  chair", "a\tchair", "a-frame", "an",
    "a", "the", "banana", "the end", "on the left side of the bed", "the chair2", "a ,chair",
    "'a chair", "the-chair",
    # backwards
    "backwards", "Backwards.", "backward", "walk backwards slowly",
    # unicode
    "caf\u00e9", "fa\u00e7ade", "na\u00efve", "\u0130stanbul", "\u212aelvin", "stra\u00dfe",
    "\uff21\uff22\uff23", "chair\u00a0table", "chair\u3000table", "\u00a0chair", "chair\u200b",
    "\u65e5\u672c", "chair \U0001fa91", "\x1cchair", "A\u0301", "\u03a3\u039f\u03a3",
    "chair\u2028table", "\u00bd", "\u00b2", "\u0663",
]

MATCH_CASES = [
    ("Brown", ["brown"]),
    ("brown.", ["Brown"]),
    ("chair", ["chair table", "chair"]),
    ("chair", ["table", "chair"]),
    ("black chair", ["chair"]),
    ("chair", ["black chair"]),
    ("", ["chair"]),
    ("chair", []),
    ("", []),
    ("chair", [""]),
    ("to the left", ["left"]),
    ("2", ["two"]),
    ("none", ["0"]),
    ("tv", ["TV"]),
    ("a chair", ["the chair"]),
    ("white  board", ["whiteboard"]),
    ("whiteboard", ["white board"]),
    ("rightt", ["right"]),
    ("left", ["right"]),
    ("on", ["wooden"]),
    ("chair?", ["chair"]),
    ("chair ?", ["chair"]),
    ("caf\u00e9", ["caf"]),
    ("yes", ["Yes", "no"]),
    ("no", ["yes"]),
    ("not", ["no"]),
    ("no", ["yes", "not"]),
    ("brown", ["brown", "Brown"]),
    ("chair\u00a0table", ["chair table"]),
    ("3", ["three chairs"]),
    ("backwards", ["backward"]),
    ("chair2", ["chair"]),
    ("chair12", ["chair"]),
    ("letf", ["left"]),
    ("sofa", ["couch", "sofa chair"]),
    ("red", ["blue", "green"]),
]

QUESTION_CASES = [
    "What is on the table?", "what", "WHAT color", "  What is it", "\tWhat", "\u00a0What",
    "\nwhat", "Whatever", "What's that", "Wha", "Is the door open?", "isn't it", "island",
    "IS", "I", "How many chairs", "However", "HOW", "Can I sit", "canopy", "Which way",
    "WHICH", "Whichever", "Where is it", "Who", "Are there", "Do I", "Does it", "",
    " ", "In which direction", "\u0130s it", "\u212aan", "Wh", "which", "can",
]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: leo_answers.py OFFICIAL_ROOT > leo_answers.json")
    sys.path.insert(0, sys.argv[1])
    stub_modules()
    from data.data_utils import clean_answer, get_sqa_question_type
    from evaluator.scanqa_eval import ScanQAEvaluator

    clean = []
    for text in CLEAN_CASES:
        out = clean_answer(text)
        clean.append({"input": text, "output": out, "idempotent": clean_answer(out) == out})

    match = []
    for pred, gts in MATCH_CASES:
        cleaned_pred = clean_answer(pred)
        cleaned_gts = [clean_answer(gt) for gt in gts]
        em, refined = ScanQAEvaluator.answer_match(None, pred=cleaned_pred, gts=cleaned_gts)
        match.append({"pred": pred, "gts": gts, "em": bool(em), "refined_em": bool(refined)})

    questions = [{"question": q, "type": get_sqa_question_type(q)} for q in QUESTION_CASES]

    golden = {
        "source": "embodied-generalist/embodied-generalist@5e9a87623a58e6bcfa40bee62cfd073b085e1a2b",
        "python": sys.version.split()[0],
        "clean_answer": clean,
        "answer_match": match,
        "sqa_question_type": questions,
    }
    json.dump(golden, sys.stdout, ensure_ascii=True, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
