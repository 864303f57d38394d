"""The transformers peer of `benches/inference/compare.sh`: how remote-sensing LVLM repositories
run inference — a Python loop over tiles and tasks, one `generate(inputs_embeds=...)` call per
tile and task — on the Qwen2 checkpoint inside strata's bench artifact (same weights), same
threads. Each call's `inputs_embeds` is as long as strata's prompt for that task (chat prefix,
image tokens, semantic tokens, query; the lengths come from the Rust bench's JSON), and makes
exactly NEW tokens (min_new_tokens = max_new_tokens, greedy). The vision tower and prompter are
not run here: the peer gets them for free.

Timed: the whole loop (building each call's embeddings, which is negligible, and `generate`),
one pass, no warm-up. Prints one JSON line.

    python benches/inference/transformers_loop.py QWEN_DIR THREADS TILES NEW PROMPT_LEN,... STOP_ID,... [DEVICE] [PRECISION]

DEVICE: cpu (default) or cuda (the clock stops after a device synchronisation). PRECISION: the
weights' dtype, f32 or bf16 (default: bf16 on cuda, f32 on cpu); compare.sh passes the one
strata ran in.
"""
import json
import resource
import sys
import time

import torch
import transformers
from transformers import Qwen2ForCausalLM

directory = sys.argv[1]
threads, tiles, new_tokens = map(int, sys.argv[2:5])
prompt_lengths = [int(n) for n in sys.argv[5].split(",")]
stop_ids = [int(n) for n in sys.argv[6].split(",")]
device = torch.device(sys.argv[7] if len(sys.argv) > 7 else "cpu")
precision = sys.argv[8] if len(sys.argv) > 8 else ("bf16" if device.type == "cuda" else "f32")
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[precision]
torch.set_num_threads(threads)
model = Qwen2ForCausalLM.from_pretrained(directory, torch_dtype=dtype, attn_implementation="sdpa").eval().to(device)
embed = model.get_input_embeddings()
generator = torch.Generator().manual_seed(1)

generated = []
with torch.inference_mode():
    start = time.perf_counter()
    for _ in range(tiles):
        for length in prompt_lengths:
            # Token embeddings of random ids stand in for the prefix, image, semantic and query
            # embeddings an LVLM would splice together: same length, same width, same dtype.
            ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
            inputs_embeds = embed(ids.to(device))
            out = model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=torch.ones(1, length, dtype=torch.long, device=device),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                eos_token_id=stop_ids,
                pad_token_id=stop_ids[-1],
            )
            generated.append(out.shape[1])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

print(json.dumps({
    "impl": f"transformers {transformers.__version__} / torch {torch.__version__}: generate per tile and task",
    "device": str(device),
    "kind": str(dtype),
    "threads": threads,
    "tiles": tiles,
    "tasks_per_tile": len(prompt_lengths),
    "max_new_tokens": new_tokens,
    "prompt_tokens_per_task": prompt_lengths,
    "generated_tokens": sum(generated),
    "generated_tokens_per_row": {"min": min(generated), "max": max(generated)},
    "seconds": seconds,
    "tiles_per_s": tiles / seconds,
    "generated_tokens_per_s": sum(generated) / seconds,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
}))
