"""Writes the golden set of `tools eval qa --references` (tools/cli/tests/eval_references.rs):

  qa_table/ScanQA_v1.0_val.json                      120 ScanQA-style questions (official layout)
  qa_table/v1_balanced_sqa_annotations_val_scannetv2.json, qa_table/v1_balanced_questions_val_scannetv2.json
                                                     36 SQA3D-style questions (official layouts)
  qa_table/predictions.json                          ScanQA's official prediction layout (answer_top10)
                                                     for ScanQA, {"question_id": int, "prediction"} for SQA3D
  qa_table/expected.json                             what the official code computes on them

Expected values, per task, computed as ScanQA's scripts/score.py does: EM@1 / EM@10 (`in` the raw
answers), then pycocoevalcap 1.2 on PTBTokenizer output (Java, stanford-corenlp-3.4.1) of the top-1
answer against all answers: Bleu(4), Meteor (meteor-1.5.jar, corpus score from pooled statistics and
the per-question scores), Rouge, Cider; ×100. SQA3D: top-1 = equal to answers[0].

Run by hand (needs `pip install pycocoevalcap` and Java):  python3 tools/cli/tests/golden/qa_table.py
"""
import json
import pathlib
import random

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

out_dir = pathlib.Path(__file__).with_name("qa_table")
out_dir.mkdir(exist_ok=True)
rng = random.Random(13)

colours = ["brown", "white", "black", "dark blue", "light grey", "red", "dark brown", "beige"]
objects = ["chair", "table", "desk", "sofa", "tv", "cabinet", "trash can", "bed", "kitchen counter",
           "office chair", "couches", "tables", "monitor", "pillows"]
places = ["on the left side of the table", "under the desk", "next to the bed", "in the corner of the room",
          "to the right of the door", "behind the couch", "on top of the cabinet", "left of the window"]
counts = ["2", "3", "two", "1", "4", "one"]
shapes = ["rectangular", "round", "square", "l-shaped"]
paraphrases = ["couch", "sofas", "seat", "bin", "garbage can", "televisions", "desks", "stools"]
tricky = ["It's the chair's leg.", "don't know", "2 chairs, 1 table", "3.5 m", "Left", "rectangular/square",
          "left-hand side", "the T-shirt (white)", ""]

scanqa = []
preds = []
for i in range(120):
    kind = i % 6
    pools = [colours, places, objects, counts, shapes, objects + paraphrases]
    pool = pools[kind]
    refs = rng.sample(pool, rng.randint(1, 3))
    top = rng.sample(pool + paraphrases + tricky, 10)
    if rng.random() < 0.35:
        top[0] = rng.choice(refs)
    elif rng.random() < 0.2:
        top[rng.randint(1, 9)] = rng.choice(refs)
    if i % 17 == 0:
        top[0] = "the " + rng.choice(refs)
    qid = f"val-scene{i:04d}-{i % 4}"
    scene = f"scene{i:04d}_00"
    scanqa.append({"answers": refs, "object_ids": [i % 7], "object_names": ["chair"],
                   "question": f"What is question {i}?", "question_id": qid, "scene_id": scene})
    preds.append({"scene_id": scene, "question_id": qid, "answer_top10": top, "bbox": [[0, 0, 0]] * 8})

sqa_words = ["left", "right", "yes", "no", "table", "two", "behind", "forward", "chair", "door", "TV", "backward"]
starts = ["What is on my left?", "Is the door open?", "How many chairs are there?", "Can I see the TV?",
          "Which way should I go?", "Where is the bed?"]
annotations, questions = [], []
for j in range(36):
    qid = 220602000000 + j
    answer = rng.choice(sqa_words)
    annotations.append({"scene_id": f"scene{j:04d}_00", "question_id": qid, "question_type": "N/A",
                        "answer_type": "other",
                        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": 1}],
                        "position": {"x": 0.5, "y": -0.25, "z": 0},
                        "rotation": {"_x": 0, "_y": 0, "_z": 0.38, "_w": 0.92}})
    questions.append({"scene_id": f"scene{j:04d}_00", "situation": "I am standing by the sofa.",
                      "alternative_situation": [], "question": starts[j % len(starts)], "question_id": qid})
    pred = answer if rng.random() < 0.5 else rng.choice(sqa_words + ["to the left", "the table"])
    preds.append({"question_id": qid, "prediction": pred})

(out_dir / "ScanQA_v1.0_val.json").write_text(json.dumps(scanqa, indent=1) + "\n")
(out_dir / "v1_balanced_sqa_annotations_val_scannetv2.json").write_text(
    json.dumps({"info": {}, "license": "", "data_type": "scannet", "data_subtype": "v2", "annotations": annotations}, indent=1) + "\n")
(out_dir / "v1_balanced_questions_val_scannetv2.json").write_text(
    json.dumps({"info": {}, "license": "", "data_type": "scannet", "data_subtype": "v2",
                "task_type": "Situated question answering", "questions": questions}, indent=1) + "\n")
(out_dir / "predictions.json").write_text(json.dumps(preds, indent=1) + "\n")

tok = PTBTokenizer()
meteor = Meteor()


def official(ids, top1, answers):
    gts = {k: [{"caption": a} for a in answers[k]] for k in ids}
    res = {k: [{"caption": top1[k]}] for k in ids}
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    out = {}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"bleu{n + 1}"] = bleu[n] * 100
    m, m_each = meteor.compute_score(gts, res)
    r, r_each = Rouge().compute_score(gts, res)
    c, c_each = Cider().compute_score(gts, res)
    out.update({"meteor": m * 100, "rouge_l": float(r) * 100, "cider": float(c) * 100})
    order = list(gts.keys())
    each = {k: {"bleu1": bleu_each[0][i] * 100, "bleu4": bleu_each[3][i] * 100, "meteor": m_each[i] * 100,
                "rouge_l": float(r_each[i]) * 100, "cider": float(c_each[i]) * 100,
                "candidate_tokens": res[k][0], "answers_tokens": gts[k]}
            for i, k in enumerate(order)}
    return out, each


ids = [q["question_id"] for q in scanqa]
top10 = {p["question_id"]: p["answer_top10"] for p in preds[:120]}
answers = {q["question_id"]: q["answers"] for q in scanqa}
scanqa_scores, scanqa_each = official(ids, {k: top10[k][0] for k in ids}, answers)
scanqa_scores["em1"] = 100 * sum(top10[k][0] in answers[k] for k in ids) / len(ids)
scanqa_scores["em10"] = 100 * sum(any(t in answers[k] for t in top10[k][:10]) for k in ids) / len(ids)

sids = [str(a["question_id"]) for a in annotations]
spred = {str(p["question_id"]): p["prediction"] for p in preds[120:]}
sans = {str(a["question_id"]): [a["answers"][0]["answer"]] for a in annotations}
sqa_scores, sqa_each = official(sids, spred, sans)
sqa_scores["top1"] = 100 * sum(spred[k] == sans[k][0] for k in sids) / len(sids)

expected = {"generator": "pycocoevalcap 1.2 (PTBTokenizer stanford-corenlp-3.4.1, meteor-1.5.jar)",
            "scanqa": scanqa_scores, "sqa3d": sqa_scores, "per_item": {**scanqa_each, **sqa_each}}
(out_dir / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
print(json.dumps({"scanqa": scanqa_scores, "sqa3d": sqa_scores}, indent=1))
