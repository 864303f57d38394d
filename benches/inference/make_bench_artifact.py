"""Writes the inputs of the inference benchmark's model artifact: a random SigLIP vision tower
(Hugging Face format) and the whole model's config.json, whose `llm` section is the config of
the Qwen2 checkpoint made by `benches/generation/make_bench_model.py`. `compare.sh` then runs

    strata model init --config OUT/config.json --tokenizer TOKENIZER \
        --checkpoint OUT/siglip/model.safetensors --checkpoint QWEN/model.safetensors ...

so the artifact's LLM weights are byte for byte the checkpoint transformers loads for the peer.

    python benches/inference/make_bench_artifact.py QWEN_DIR OUT_DIR
"""
import json
import pathlib
import sys

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

qwen, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(out / "siglip").mkdir(parents=True, exist_ok=True)
torch.manual_seed(1)
# SigLIP-base's width at 224 px / 16 px patches (196 image tokens), 4 of its 12 layers: the
# prompt keeps the shape of the real one (image tokens, then L·N_a semantic tokens) at a size a
# 2-core machine runs in minutes.
vision = SiglipVisionConfig(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=4,
    num_attention_heads=12,
    image_size=224,
    patch_size=16,
    layer_norm_eps=1e-6,
)
SiglipVisionModel(vision).eval().save_pretrained(out / "siglip", safe_serialization=True)

keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size", "layer_norm_eps")
config = {
    "vision": {k: getattr(vision, k) for k in keys},
    "llm": json.loads((qwen / "config.json").read_text()),
    # Levels at layers 1/3, 2/3 and 4 of 4 (the default rule), 32 aggregation tokens each: 96
    # semantic tokens (the paper's 144 each would be 432).
    "prompter": {"num_aggregation_tokens": 32, "mlp_ratio": 4.0},
    "experts": {"every": 4, "rank": 64},
    "lora": {"rank": 16, "alpha": 32.0, "dropout": 0.0},
    "retrieval": {"top_k": 5, "max_semantic_tokens": 1024},
}
(out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
print(f"wrote {out}/config.json and {out}/siglip")
