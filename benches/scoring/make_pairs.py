"""Writes N caption pairs for the scoring benchmark as the answer files `strata eval score`
reads: predictions.jsonl ({"id", "answer"}) and references.jsonl ({"id", "references"}, 1-5
references each), remote-sensing phrasing, deterministic.

    python benches/scoring/make_pairs.py N OUT_DIR
"""
import json
import pathlib
import random
import sys

n, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(11)
subjects = ["many buildings", "a large airport", "several planes", "a river", "dense green trees", "a parking lot",
            "some storage tanks", "a harbour", "boats", "farmland", "a baseball field", "a highway", "houses",
            "a bridge", "cars", "a beach", "white waves", "a golf course", "a freeway", "residential areas",
            "a church", "a stadium", "a railway station", "a viaduct", "meadows", "bare land", "a desert", "ponds"]
verbs = ["are arranged", "is located", "are parked", "lies", "are scattered", "is surrounded", "are next to",
         "runs", "can be seen", "are built", "stretch"]
places = ["near the road", "beside a lake", "in the middle", "along the river", "around the square", "on the bare land",
          "next to the runways", "in two rows", "by the sea", "across the city", "among the trees", "on both sides"]
extras = ["", "", " with some cars", " and a few trees", " in a neat way", " under the sun", " clearly"]
synonyms = {"many": "lots of", "buildings": "houses", "large": "big", "planes": "airplanes", "boats": "ships",
            "cars": "vehicles", "parked": "stopped", "near": "close to", "trees": "woods", "road": "street"}


def sentence():
    return f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(places)}{rng.choice(extras)}"


def variant(text):
    words = text.split()
    r = rng.random()
    if r < 0.3:
        words = [synonyms.get(w, w) for w in words]
    elif r < 0.5 and len(words) > 3:
        del words[rng.randrange(len(words))]
    elif r < 0.6:
        rng.shuffle(words)
    return " ".join(words)


with open(out / "predictions.jsonl", "w") as preds, open(out / "references.jsonl", "w") as refs:
    for i in range(n):
        base = sentence()
        references = [variant(base) for _ in range(rng.randint(1, 5))]
        answer = variant(base) if rng.random() < 0.8 else sentence()
        preds.write(json.dumps({"id": str(i), "answer": answer}) + "\n")
        refs.write(json.dumps({"id": str(i), "references": references}) + "\n")
print(f"wrote {n} pairs to {out}")
