#!/usr/bin/env python3
"""PyTorch's own bf16 outputs for the Qwen3 + LoRA parity fixture (../shared/parity/qwen3).

The shared fixture's outputs are float32 (transformers Qwen3ForCausalLM, eager attention, peft
LoRA; its README). This script runs the same model, adapter and inputs the way a PyTorch + PEFT
user trains with frozen bf16 weights: the base model loaded in bfloat16 (activations in bf16
too), the adapter in float32 (peft's default autocast_adapter_dtype=True upcasts it), and writes
the outputs `tools parity --bf16-reference` compares our bf16 path with, relative to the values'
scale:

  bf16_outputs.safetensors: logits [2,12,V], logits_embeds [1,11,V] (inference), train.loss [1],
      train.logits [1,16,V] and grad.<adapter key> (the LoRA gradients of train.loss), all float32
      (bf16 values widened exactly, gradients as peft computes them in float32);
  reference.json: how they were made (versions, recipe) and the sha256 of every fixture file
      used, which `tools parity` checks before comparing (a reference of other inputs is refused).

Usage: python tools/parity/qwen3_bf16.py [FIXTURE] [OUT]   (defaults ../shared/parity/qwen3,
trainer/tests/fixtures/qwen3_bf16). Deterministic on CPU; takes a few seconds.
"""
import hashlib
import json
import os
import sys

import peft
import torch
import transformers
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    fixture = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "..", "shared", "parity", "qwen3")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "trainer", "tests", "fixtures", "qwen3_bf16")
    fixture = os.path.normpath(fixture)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)

    inputs = load_file(os.path.join(fixture, "inputs.safetensors"))
    model = transformers.Qwen3ForCausalLM.from_pretrained(
        os.path.join(fixture, "base"), dtype=torch.bfloat16, attn_implementation="eager"
    )
    model = peft.PeftModel.from_pretrained(model, os.path.join(fixture, "lora"), is_trainable=True)
    adapter_dtypes = sorted({str(p.dtype) for n, p in model.named_parameters() if "lora_" in n})
    assert adapter_dtypes == ["torch.float32"], adapter_dtypes
    model.eval()  # dropout 0 anyway; eval keeps the forward identical to inference

    result = {}
    with torch.no_grad():
        result["logits"] = model(input_ids=inputs["input_ids"]).logits.float()
        embeds = inputs["inputs_embeds"].to(torch.bfloat16)
        result["logits_embeds"] = model(inputs_embeds=embeds).logits.float()

    ids, labels = inputs["train.input_ids"], inputs["train.labels"]
    out_train = model(input_ids=ids, labels=labels)
    out_train.loss.backward()
    result["train.loss"] = out_train.loss.detach().float().reshape(1)
    result["train.logits"] = out_train.logits.detach().float()
    for name, p in model.named_parameters():
        if "lora_" in name:
            # peft's parameter name → the adapter file's key (no adapter name in the key).
            key = name.replace(".default", "")
            result["grad." + key] = p.grad.detach().float().contiguous()

    result = {k: v.contiguous() for k, v in result.items()}
    save_file(result, os.path.join(out, "bf16_outputs.safetensors"))
    files = ["inputs.safetensors", "base/config.json", "base/model.safetensors",
             "lora/adapter_config.json", "lora/adapter_model.safetensors"]
    record = {
        "about": "PyTorch's bf16 outputs of the shared Qwen3 + LoRA parity fixture (tools/parity/qwen3_bf16.py)",
        "recipe": "base model loaded in bfloat16 (weights and activations), eager attention; "
                  "peft adapter in float32 (autocast_adapter_dtype); CPU",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "fixture_sha256": {f: sha256(os.path.join(fixture, f)) for f in files},
        "scales": {k: float(v.abs().max()) for k, v in sorted(result.items()) if not k.startswith("grad.")},
        "max_abs_grad": max(float(v.abs().max()) for k, v in result.items() if k.startswith("grad.")),
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps({k: record[k] for k in ("scales", "max_abs_grad", "torch")}, indent=1))


if __name__ == "__main__":
    main()
