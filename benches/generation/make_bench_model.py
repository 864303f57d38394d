"""Writes a random Qwen2 checkpoint (Hugging Face format) for the generation benchmark: the
same config and weights are then run by strata and by transformers.

    python benches/generation/make_bench_model.py OUT_DIR
"""
import pathlib
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
# Qwen2.5-0.5B's width, heads and MLP, 12 layers and a 32k vocabulary: small enough for a
# 2-core machine, shaped like the real family.
config = Qwen2Config(
    vocab_size=32768,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=12,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
model = Qwen2ForCausalLM(config).eval()
model.save_pretrained(out, safe_serialization=True)
print(f"wrote {out}")
