"""Converts a Llama-architecture GGUF checkpoint (llama.cpp's format) to a Hugging Face model
folder: config.json, model.safetensors (f32), tokenizer.json, tokenizer_config.json and
generation_config.json, so that transformers and Strata load the same weights.

    python gguf_to_hf.py MODEL.gguf OUT_DIR

Only the `gguf` package (PyPI, the llama.cpp project's reader) and numpy are needed. What it undoes
of llama.cpp's `convert_hf_to_gguf.py`:
  * tensor names (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, ...);
  * quantization (Q4_1, Q8_0, ... dequantized by `gguf.quants.dequantize`);
  * the row permutation of the query and key projections (llama.cpp interleaves the two rotary
    halves of each head; Hugging Face Llama keeps them as halves, `rotate_half`);
  * the tokenizer: a GPT-2 style byte-level BPE (`tokenizer.ggml.model = gpt2`) becomes a
    `tokenizers` BPE model with its merges; control tokens (token type 3) become special added
    tokens. The `smollm` pre-tokenizer (llama.cpp) is digits split one by one, then GPT-2's
    byte-level regex: `Digits(individual_digits)` + `ByteLevel`.
Refuses, with a message, any architecture or tokenizer it does not know.
"""
import json
import pathlib
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file

LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Pre-tokenizers of llama.cpp (`tokenizer.ggml.pre`) this script can write as `tokenizers` JSON.
PRE_TOKENIZERS = {
    "smollm": [{"type": "Digits", "individual_digits": True}],
    "gpt-2": [],
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"error: the GGUF has no `{key}`")
        return default
    return f.contents()


def unpermute(w, heads):
    """Inverse of llama.cpp's `permute`: per head, rows (pairs, 2) -> (2, pairs)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_name(gguf_name):
    base, _, suffix = gguf_name.rpartition(".")
    parts = base.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{suffix}"
    return f"{TOP_NAMES[base]}.{suffix}"


def main(src, out):
    reader = GGUFReader(src)
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"error: architecture `{arch}` is not supported (only llama)")
    heads = int(field(reader, "llama.attention.head_count"))
    kv_heads = int(field(reader, "llama.attention.head_count_kv", heads))
    tensors = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF lists dimensions fastest first; numpy arrays are row-major: reverse.
        w = w.reshape([int(d) for d in reversed(t.shape.tolist())])
        name = tensor_name(t.name)
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, kv_heads)
        tensors[name] = np.ascontiguousarray(w)
    tied = "lm_head.weight" not in tensors

    tokens = field(reader, "tokenizer.ggml.tokens")
    model_kind = field(reader, "tokenizer.ggml.model")
    pre = field(reader, "tokenizer.ggml.pre", "gpt-2")
    if model_kind != "gpt2" or pre not in PRE_TOKENIZERS:
        sys.exit(f"error: tokenizer `{model_kind}` with pre-tokenizer `{pre}` is not supported")
    merges = field(reader, "tokenizer.ggml.merges")
    types = field(reader, "tokenizer.ggml.token_type")
    bos = int(field(reader, "tokenizer.ggml.bos_token_id"))
    eos = int(field(reader, "tokenizer.ggml.eos_token_id"))
    pad = int(field(reader, "tokenizer.ggml.padding_token_id", eos))
    unk = int(field(reader, "tokenizer.ggml.unknown_token_id", eos))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(tokens),
        "hidden_size": int(field(reader, "llama.embedding_length")),
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        "rope_theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon"))),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    }
    # f32 epsilon as the GGUF stores it, printed as the short decimal HF configs use.
    config["rms_norm_eps"] = float(f"{config['rms_norm_eps']:.6g}")

    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, (tok, kind) in enumerate(zip(tokens, types))
        if int(kind) == 3
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": PRE_TOKENIZERS[pre] + [byte_level]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": tokens[unk],
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }
    tokenizer_config = {
        "model_max_length": config["max_position_embeddings"],
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "pad_token": tokens[pad],
        "unk_token": tokens[unk],
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "GPT2Tokenizer",
        "chat_template": field(reader, "tokenizer.chat_template", ""),
    }
    generation = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Sorted names, fixed metadata: the same GGUF always gives the same bytes (setup pins them).
    save_file(dict(sorted(tensors.items())), str(out / "model.safetensors"), metadata={"format": "pt"})
    for name, value in [("config.json", config), ("tokenizer.json", tokenizer), ("tokenizer_config.json", tokenizer_config), ("generation_config.json", generation)]:
        (out / name).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    params = sum(v.size for v in tensors.values())
    print(f"wrote {out}: {len(tensors)} tensors, {params} parameters, vocabulary {len(tokens)}, tied embeddings: {tied}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
