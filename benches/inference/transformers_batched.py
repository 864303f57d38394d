"""The strong transformers peer of `benches/inference/compare.sh`: what an engineer who cares about
throughput runs with transformers — one batched `generate(inputs_embeds=...)` per micro-batch,
inputs left-padded, on the Qwen2 checkpoint inside strata's bench artifact (same weights), same
threads, same precision, same micro-batches as strata ran (BATCHES: tiles per batch, in order;
each batch holds every task of its tiles, so BATCH tiles x TASKS rows). Each row's
`inputs_embeds` is as long as strata's prompt for that task, and every row makes exactly NEW
tokens (min_new_tokens = max_new_tokens, greedy). The vision tower and prompter are not run
here: the peer gets them for free.

Timed: the whole loop, one pass, no warm-up (strata gets none either). Prints one JSON line.

    python benches/inference/transformers_batched.py QWEN_DIR THREADS BATCHES NEW PROMPT_LEN,... STOP_ID,... DEVICE PRECISION

BATCHES: tiles per micro-batch, comma-separated (the direct bench's `batches`). PRECISION: f32
or bf16, the weights' dtype.
"""
import json
import resource
import sys
import time

import torch
import transformers
from transformers import Qwen2ForCausalLM

directory = sys.argv[1]
threads = int(sys.argv[2])
batches = [int(n) for n in sys.argv[3].split(",")]
new_tokens = int(sys.argv[4])
prompt_lengths = [int(n) for n in sys.argv[5].split(",")]
stop_ids = [int(n) for n in sys.argv[6].split(",")]
device = torch.device(sys.argv[7])
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[sys.argv[8]]
torch.set_num_threads(threads)
model = Qwen2ForCausalLM.from_pretrained(directory, torch_dtype=dtype, attn_implementation="sdpa").eval().to(device)
embed = model.get_input_embeddings()
generator = torch.Generator().manual_seed(1)
width = max(prompt_lengths)

generated = []
with torch.inference_mode():
    start = time.perf_counter()
    for tiles in batches:
        lengths = [n for _ in range(tiles) for n in prompt_lengths]
        rows = len(lengths)
        # Random token embeddings stand in for the prefix, image, semantic and query embeddings
        # an LVLM splices together; rows shorter than the longest are padded on the left.
        ids = torch.randint(0, model.config.vocab_size, (rows, width), generator=generator)
        mask = torch.zeros(rows, width, dtype=torch.long)
        for row, n in enumerate(lengths):
            mask[row, width - n:] = 1
        out = model.generate(
            inputs_embeds=embed(ids.to(device)),
            attention_mask=mask.to(device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=stop_ids,
            pad_token_id=stop_ids[-1],
        )
        generated.extend([out.shape[1]] * rows)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

tiles = sum(batches)
print(json.dumps({
    "impl": f"transformers {transformers.__version__} / torch {torch.__version__}: batched generate, left-padded",
    "device": str(device),
    "kind": str(dtype),
    "threads": threads,
    "tiles": tiles,
    "batches": batches,
    "tasks_per_tile": len(prompt_lengths),
    "max_new_tokens": new_tokens,
    "prompt_tokens_per_task": prompt_lengths,
    "generated_tokens": sum(generated),
    "seconds": seconds,
    "tiles_per_s": tiles / seconds,
    "generated_tokens_per_s": sum(generated) / seconds,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
}))
