"""The peer of eval/benches/scoring.rs: the reference implementations timed on the same answer
files — pycocoevalcap Bleu and Cider, rouge-score (ROUGE-1 and ROUGE-L), nltk METEOR with
WordNet 3.0, and bert-score (all-MiniLM-L6-v2, on the first BERT_N pairs). Same tokens as
strata. Prints one JSON line of seconds per metric and the headline scores.

    python benches/scoring/python_scoring.py DIR ASSETS_DIR THREADS BERT_N
"""
import json
import os
import re
import sys
import tempfile
import time

directory, assets, threads, bert_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
nltk_data = tempfile.mkdtemp()
os.makedirs(f"{nltk_data}/corpora")
os.symlink(f"{assets}/wordnet-3.0", f"{nltk_data}/corpora/wordnet")
os.environ["NLTK_DATA"] = nltk_data

import torch  # noqa: E402
from bert_score import score as bert_score  # noqa: E402
from nltk.corpus import wordnet  # noqa: E402
from nltk.translate.meteor_score import meteor_score  # noqa: E402
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

torch.set_num_threads(threads)
preds = [json.loads(line) for line in open(f"{directory}/predictions.jsonl")]
refs = [json.loads(line) for line in open(f"{directory}/references.jsonl")]
candidates = [p["answer"] for p in preds]
references = [r["references"] for r in refs]


def tokens(text):
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


seconds, scores = {}, {}
start = time.perf_counter()
gts = {str(i): [" ".join(tokens(r)) for r in rs] for i, rs in enumerate(references)}
res = {str(i): [" ".join(tokens(c))] for i, c in enumerate(candidates)}
seconds["tokenize"] = time.perf_counter() - start

start = time.perf_counter()
bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
seconds["bleu"] = time.perf_counter() - start
scores["BLEU-4"] = bleu[3]

start = time.perf_counter()
cider, _ = Cider().compute_score(gts, res)
seconds["cider"] = time.perf_counter() - start
scores["CIDEr-D"] = float(cider)

start = time.perf_counter()
scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
rouge = [scorer.score_multi(rs, c) for c, rs in zip(candidates, references)]
seconds["rouge"] = time.perf_counter() - start
scores["ROUGE-L"] = sum(r["rougeL"].fmeasure for r in rouge) / len(rouge)

wordnet.ensure_loaded()
start = time.perf_counter()
meteor = [meteor_score([tokens(r) for r in rs], tokens(c), wordnet=wordnet) for c, rs in zip(candidates, references)]
seconds["meteor"] = time.perf_counter() - start
scores["METEOR"] = sum(meteor) / len(meteor)

start = time.perf_counter()
_, _, f1 = bert_score(candidates[:bert_n], references[:bert_n], model_type=f"{assets}/all-minilm-l6-v2", num_layers=6, device="cpu")
seconds["bertscore"] = time.perf_counter() - start
scores["BERTScore F1"] = float(f1.mean())

seconds["total_without_bertscore"] = sum(v for k, v in seconds.items() if k != "bertscore")
print(json.dumps({"impl": "python references", "pairs": len(candidates), "bertscore_pairs": bert_n, "seconds": seconds, "scores": scores}))
