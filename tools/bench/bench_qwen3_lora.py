#!/usr/bin/env python3
"""PyTorch side of the "Qwen3 + LoRA train step" benchmark (BENCHMARKS.md), run by hand.

Same architecture, batch, LoRA and optimizer as trainer/examples/qwen3_lora_bench.rs:
transformers Qwen3ForCausalLM (eager attention, float32, CPU) + peft LoRA r=8, alpha=16 on
q/k/v/o, AdamW lr 1e-4; loss on the second half of each row. Prints the median step time over
--steps steps after 2 warm-up steps, and the peak RSS of the process.

    pip install torch transformers peft   # CPU build is enough
    python3 tools/bench/bench_qwen3_lora.py --steps 10
"""
import argparse
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

CONFIG = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=4, head_dim=32, max_position_embeddings=4096,
              rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")
BATCH, SEQ = 4, 256


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Qwen3Config(**CONFIG)
    cfg._attn_implementation = "eager"
    model = Qwen3ForCausalLM(cfg).float()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ))
    labels = (torch.arange(BATCH * SEQ).reshape(BATCH, SEQ) * 7) % CONFIG["vocab_size"]
    labels[:, : SEQ // 2] = -100
    times = []
    for step in range(args.steps + 2):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step >= 2:
            times.append(dt)
        print(f"step {step}: loss {loss.item():.4f}, {dt:.3f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pytorch {torch.__version__}: batch {BATCH}x{SEQ}, median step {statistics.median(times):.3f} s "
          f"over {args.steps} steps (min {min(times):.3f}, max {max(times):.3f}), peak RSS {peak:.0f} MiB, "
          f"threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
