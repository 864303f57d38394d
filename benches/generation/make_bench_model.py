"""Writes a random Qwen2 checkpoint (Hugging Face format) for the generation benchmark: the
same config and weights are then run by strata and by transformers. The inference benchmark
(`benches/inference/compare.sh`) makes its LLM with the same script, with fewer layers.

    python benches/generation/make_bench_model.py OUT_DIR [--layers N] [--never-emit ID,ID...]

`--never-emit` zeroes those tokens' rows of `lm_head`: their logit is then exactly 0 while the
largest of the other random logits is positive, so greedy decoding never picks them. The
inference benchmark passes the stop tokens, so every answer has the same number of tokens on
every side.
"""
import argparse
import pathlib

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("out", type=pathlib.Path)
parser.add_argument("--layers", type=int, default=12)
parser.add_argument("--never-emit", default="", help="comma-separated token ids greedy decoding must never pick")
args = parser.parse_args()

args.out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
# Qwen2.5-0.5B's width, heads and MLP, 12 layers and a 32k vocabulary: small enough for a
# 2-core machine, shaped like the real family.
config = Qwen2Config(
    vocab_size=32768,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=args.layers,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
model = Qwen2ForCausalLM(config).eval()
never = [int(t) for t in args.never_emit.split(",") if t.strip()]
if never:
    with torch.no_grad():
        model.lm_head.weight[never] = 0.0
model.save_pretrained(args.out, safe_serialization=True)
print(f"wrote {args.out}")
