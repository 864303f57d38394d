"""The peer of model/benches/training.rs: LoRA training throughput of transformers + peft on
the same Hugging Face checkpoint, with the same settings: base frozen, LoRA (rank R, alpha 2R,
no dropout, no bias) on q/k/v/o/gate/up/down, AdamW (lr 1e-4) over the adapters, next-token
cross-entropy over every position of the same pseudo-random rows, 2 untimed steps then STEPS
timed. Prints one JSON line.

    python peft_train.py DIR THREADS BATCH SEQ STEPS RANK
"""
import json
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

WARMUP = 2
directory, threads, batch, seq, steps, rank = sys.argv[1], *map(int, sys.argv[2:7])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="sdpa")
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none", target_modules=targets))
model.train()
trainable = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(trainable, lr=1e-4)
vocab = model.config.vocab_size
ids = torch.tensor([[(b * 7919 + t * 104729 + 17) % vocab for t in range(seq)] for b in range(batch)], dtype=torch.int64)
losses, timed = [], 0.0
for step in range(WARMUP + steps):
    start = time.perf_counter()
    logits = model(input_ids=ids, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    if step >= WARMUP:
        timed += time.perf_counter() - start
samples = batch * steps / timed
print(json.dumps({
    "side": "transformers+peft", "threads": threads, "batch": batch, "seq": seq, "steps": steps, "rank": rank,
    "trainable_parameters": sum(p.numel() for p in trainable),
    "samples_per_s": samples, "tokens_per_s": samples * seq,
    "first_loss": losses[0], "last_loss": losses[-1],
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
