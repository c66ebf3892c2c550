#!/usr/bin/env python3
"""PyTorch + PEFT side of the GPU LoRA train-step benchmark (ci/gpu.sh), beside
trainer/examples/qwen3_lora_bench.rs --json on the same GPU.

The same shape (a Qwen3 config JSON, e.g. tools/bench/qwen3_4b_instruct_2507.json: the real
Qwen3-4B-Instruct-2507 architecture), random weights, frozen weights in bf16, peft LoRA (r, alpha
2r, on q/k/v/o, float32 adapters: peft's autocast_adapter_dtype), AdamW lr 1e-4 on the adapters,
loss on the second half of each row, the same labels. Attention: PyTorch's default (sdpa).
Prints one JSON line: median step time, tokens/s and model FLOPs utilisation, with the same FLOPs
formula as the Rust side (per token 4·N + 12·L·H·d·T; see the example's doc).

    python3 tools/bench/bench_qwen3_lora_gpu.py --config tools/bench/qwen3_4b_instruct_2507.json \
        --device cuda --batch 4 --seq 512 --peak-tflops 989
    python3 tools/bench/bench_qwen3_lora_gpu.py --config tools/bench/qwen3_tiny_shape.json \
        --device cpu --batch 1 --seq 32 --steps 2   # the CPU smoke run
"""
import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def step_flops(c, batch, seq):
    hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    h, q_out, kv_out = c["hidden_size"], c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    per_layer = h * q_out + 2 * h * kv_out + q_out * h + 3 * h * c["intermediate_size"]
    n = c["num_hidden_layers"] * per_layer + c["vocab_size"] * h
    attention = 12 * c["num_hidden_layers"] * c["num_attention_heads"] * hd * seq
    return batch * seq * (4 * n + attention)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (MFU)")
    ap.add_argument("--attn", default="sdpa", help="transformers attention implementation")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with open(args.config) as f:
        c = json.load(f)
    cfg = Qwen3Config(**c)
    cfg._attn_implementation = args.attn
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # frozen weights drawn in bf16, on the device
    with device:
        model = Qwen3ForCausalLM(cfg)
    torch.set_default_dtype(previous)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                             target_modules=list(PROJECTIONS), task_type="CAUSAL_LM"))
    adapter = {str(p.dtype) for n, p in model.named_parameters() if p.requires_grad}
    assert adapter == {"torch.float32"}, adapter
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b, t, v = args.batch, args.seq, c["vocab_size"]
    ids = torch.randint(0, v, (b, t), device=device)
    labels = ((torch.arange(b * t, device=device).reshape(b, t) * 7) % v).long()
    labels[:, : t // 2] = -100
    times = []
    for step in range(args.steps + args.warmup):
        sync(device)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
        print(f"step {step}: loss {loss.item():.4f}, {dt:.3f} s", flush=True, file=__import__("sys").stderr)
    median = statistics.median(times)
    flops = step_flops(c, b, t)
    achieved = flops / median / 1e12
    print(json.dumps({
        "impl": f"pytorch {torch.__version__} + peft ({args.attn})",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "frozen_dtype": "BF16",
        "layers": c["num_hidden_layers"], "batch": b, "seq": t, "lora_r": args.rank, "steps": args.steps,
        "median_step_s": median, "tokens_per_s": b * t / median,
        "model_tflop_per_step": flops / 1e12, "achieved_tflops": achieved,
        "peak_tflops": args.peak_tflops,
        "mfu": achieved / args.peak_tflops if args.peak_tflops else None,
    }))


if __name__ == "__main__":
    main()
