"""The peer of model/benches/generation.rs: transformers' Qwen2ForCausalLM on CPU, eager
PyTorch, same checkpoint, same prompt length, same number of new tokens, same threads. Prefill
is one forward over the prompt; decode is `generate` (greedy, KV cache) minus one prefill.
BATCH rows of the same prompt decode together (default 1); PRECISION is f32 (default) or bf16,
the weights' dtype. Prints one JSON line.

    python benches/generation/transformers_generate.py DIR THREADS PROMPT NEW RUNS [BATCH] [PRECISION]
"""
import json
import resource
import sys
import time

import torch
from transformers import Qwen2ForCausalLM

directory, threads, prompt_len, new_tokens, runs = sys.argv[1], *map(int, sys.argv[2:6])
batch = int(sys.argv[6]) if len(sys.argv) > 6 else 1
precision = sys.argv[7] if len(sys.argv) > 7 else "f32"
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[precision]
torch.set_num_threads(threads)
model = Qwen2ForCausalLM.from_pretrained(directory, torch_dtype=dtype, attn_implementation="sdpa").eval()
generator = torch.Generator().manual_seed(1)
input_ids = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=generator).repeat(batch, 1)

prefill, total = [], []
with torch.inference_mode():
    model(input_ids)  # warm-up
    for _ in range(runs):
        start = time.perf_counter()
        model(input_ids, use_cache=True)
        prefill.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
        total.append(time.perf_counter() - start)
best_prefill, best_total = min(prefill), min(total)
print(json.dumps({
    "impl": f"transformers {__import__('transformers').__version__} / torch {torch.__version__}",
    "threads": threads,
    "batch": batch,
    "precision": precision,
    "prompt_tokens": prompt_len,
    "new_tokens": new_tokens,
    "prefill_tokens_per_s": batch * prompt_len / best_prefill,
    "decode_tokens_per_s": batch * (new_tokens - 1) / (best_total - best_prefill),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
