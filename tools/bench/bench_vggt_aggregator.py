#!/usr/bin/env python3
"""VGGT aggregator forward time per view on CPU: our candle implementation vs PyTorch.

Run by hand (needs torch, safetensors, numpy and a release build of the trainer example):

    python3 tools/bench/bench_vggt_aggregator.py [--threads 2] [--runs 5] [--views 4]

Method
  1. PyTorch side: the official `vggt.models.aggregator.Aggregator` when `import vggt` works
     (pass --vggt-src to a facebookresearch/vggt checkout), otherwise the PyTorch re-statement
     below, built from the same torch ops the official code uses (nn.LayerNorm, nn.Linear,
     F.scaled_dot_product_attention, exact GELU, antialiased bicubic F.interpolate). The
     re-statement is first checked against the official golden tensors in
     shared/parity/vggt/{conv,dinov2} (must be <= 2e-5), so both time the same computation.
  2. A small random configuration (DINOv2-S-like patch embed: width 384, 4 blocks, 6 heads;
     4 frame + 4 global blocks; 4 register tokens; RoPE 100) on S views of H x W (non-square,
     so the positional grid is resampled) is written as a parity-layout folder (config.json,
     weights.safetensors, case with images and every output).
  3. Both implementations run the full forward (every layer returned) in float32 after one
     warm-up; median of --runs timed runs; the same thread count for both (torch.set_num_threads,
     RAYON_NUM_THREADS). The candle run also reports its max abs diff against PyTorch's last layer.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def rope_2d(x, pos, base):
    """2-D RoPE: first half of head_dim by row, second half by column, rotate-half."""
    d = x.shape[-1] // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2).float() / d))

    def rotate(t, p):
        angles = p.float()[..., None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1).to(t.dtype)[:, None]
        t1, t2 = t.chunk(2, dim=-1)
        return t * angles.cos() + torch.cat([-t2, t1], dim=-1) * angles.sin()

    rows, cols = x.chunk(2, dim=-1)
    return torch.cat([rotate(rows, pos[..., 0]), rotate(cols, pos[..., 1])], dim=-1)


class LayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))


class Attention(nn.Module):
    def __init__(self, dim, heads, qk_norm):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()

    def forward(self, x, pos, rope_base):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if pos is not None:
            q, k = rope_2d(q, pos, rope_base), rope_2d(k, pos, rope_base)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, eps, qk_norm):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qk_norm)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x, pos=None, rope_base=100.0):
        x = x + self.ls1.gamma * self.attn(self.norm1(x), pos, rope_base)
        return x + self.ls2.gamma * self.mlp(self.norm2(x))


class ConvEmbed(nn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Dinov2(nn.Module):
    def __init__(self, dim, depth, heads, mlp_ratio, registers, img_size, patch):
        super().__init__()
        grid = img_size // patch
        self.patch = patch
        self.patch_embed = ConvEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, 1e-6, False) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        _, _, hh, ww = x.shape
        h, w = hh // self.patch, ww // self.patch
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        grid = int((self.pos_embed.shape[1] - 1) ** 0.5)
        if h == grid and w == grid:
            pos = self.pos_embed
        else:
            table = self.pos_embed[:, 1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
            table = F.interpolate(table, size=(h, w), mode="bicubic", antialias=True)
            pos = torch.cat([self.pos_embed[:, :1], table.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)
        x = x + pos
        x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.register_tokens.shape[1]:]


class Aggregator(nn.Module):
    def __init__(self, kw, dino):
        super().__init__()
        c, self.patch = kw["embed_dim"], kw["patch_size"]
        self.rope_base = kw["rope_freq"]
        if dino is None:
            self.patch_embed = ConvEmbed(c, self.patch)
        else:
            self.patch_embed = Dinov2(c, dino["depth"], dino["num_heads"], dino["mlp_ratio"],
                                      dino["num_register_tokens"], kw["img_size"], self.patch)
        r = kw["num_register_tokens"]
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, c))
        self.register_token = nn.Parameter(torch.zeros(1, 2, r, c))
        make = lambda: Block(c, kw["num_heads"], kw["mlp_ratio"], 1e-5, kw["qk_norm"])
        self.frame_blocks = nn.ModuleList(make() for _ in range(kw["depth"]))
        self.global_blocks = nn.ModuleList(make() for _ in range(kw["depth"]))

    def forward(self, images):
        b, s, _, hh, ww = images.shape
        mean = torch.tensor(MEAN).view(1, 1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 1, 3, 1, 1)
        x = ((images - mean) / std).view(b * s, 3, hh, ww)
        patches = self.patch_embed(x)
        c = patches.shape[-1]

        def special(t):
            t = torch.cat([t[:, :1], t[:, 1:].expand(1, s - 1, *t.shape[2:])], dim=1)
            return t.expand(b, *t.shape[1:]).reshape(b * s, t.shape[2], c)

        tokens = torch.cat([special(self.camera_token), special(self.register_token), patches], dim=1)
        p = tokens.shape[1]
        h, w = hh // self.patch, ww // self.patch
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pos = torch.stack([yy.flatten(), xx.flatten()], dim=-1) + 1
        pos = torch.cat([torch.zeros(p - h * w, 2, dtype=pos.dtype), pos])
        outputs = []
        for frame, glob in zip(self.frame_blocks, self.global_blocks):
            tokens = frame(tokens.view(b * s, p, c), pos[None].expand(b * s, p, 2), self.rope_base)
            frame_out = tokens.view(b, s, p, c)
            tokens = glob(tokens.view(b, s * p, c), pos.repeat(s, 1)[None].expand(b, s * p, 2), self.rope_base)
            outputs.append(torch.cat([frame_out, tokens.view(b, s, p, c)], dim=-1))
        return outputs


def build(folder_config, weights=None):
    model = Aggregator(folder_config["aggregator_kwargs"], folder_config["dinov2"]).eval()
    if weights is not None:
        sd = {k[len("aggregator."):]: v for k, v in weights.items() if k.startswith("aggregator.")}
        model.load_state_dict(sd, strict=True)
    return model


def check_against_official(shared):
    """max abs diff of the re-statement against every golden output (must be <= 2e-5)."""
    worst = 0.0
    for variant in ("conv", "dinov2"):
        folder = shared / "parity" / "vggt" / variant
        cfg = json.loads((folder / "config.json").read_text())
        model = build(cfg, load_file(str(folder / "weights.safetensors")))
        for case in cfg["cases"]:
            golden = load_file(str(folder / case["file"]))
            with torch.no_grad():
                outs = model(golden["images"])
            for i, out in enumerate(outs):
                worst = max(worst, (out - golden[f"output.{i}"]).abs().max().item())
    return worst


def official_aggregator(kw, dino):
    """The official module when importable (a checkout given with --vggt-src), else None."""
    try:
        from vggt.models.aggregator import Aggregator as Official  # noqa: PLC0415
    except ImportError:
        return None
    return Official(img_size=kw["img_size"], patch_size=kw["patch_size"], embed_dim=kw["embed_dim"],
                    depth=kw["depth"], num_heads=kw["num_heads"], mlp_ratio=kw["mlp_ratio"],
                    num_register_tokens=kw["num_register_tokens"], patch_embed="dinov2_vits14_reg").eval()


def randomise(model, seed):
    """Seeded, non-trivial weights (scheme of shared/parity/vggt/README.md)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.2 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.dim() >= 2 and "token" not in name and "pos_embed" not in name:
                fan_in = p[0].numel()
                p.copy_(noise / fan_in ** 0.5)
            else:
                p.copy_(0.1 * noise)


def time_runs(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--width", type=int, default=294)
    ap.add_argument("--vggt-src", type=Path, help="a facebookresearch/vggt checkout to time the official code")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("ROOMPLAN_SHARED", REPO.parent / "shared")))
    ap.add_argument("--cargo-profile", default="release",
                    help="cargo profile of the candle run (dev keeps dependencies at opt-level 3)")
    ap.add_argument("--keep", type=Path, help="write the benchmark folder here instead of a temporary one")
    ap.add_argument("--candle-bin", type=Path,
                    help="run this built bench_vggt example instead of `cargo run` (e.g. a kept copy of an "
                         "older build, to time two versions side by side on the same folder)")
    args = ap.parse_args()
    if args.vggt_src:
        sys.path.insert(0, str(args.vggt_src))
    torch.set_num_threads(args.threads)

    kw = dict(img_size=518, patch_size=14, embed_dim=384, depth=4, num_heads=6, mlp_ratio=4.0,
              num_register_tokens=4, aa_order=["frame", "global"], aa_block_size=1, qk_norm=True,
              rope_freq=100, init_values=0.01, patch_embed="dinov2_vits14_reg")
    dino = dict(embed_dim=384, depth=4, num_heads=6, mlp_ratio=4.0, num_register_tokens=4)
    folder_cfg = {"patch_embed": "dinov2_vits14_reg", "aggregator_kwargs": kw, "dinov2": dino}

    official = official_aggregator(kw, dino)
    if official is None:
        diff = check_against_official(args.shared)
        print(f"PyTorch re-statement vs official golden outputs: max abs diff {diff:.2e}")
        if diff > 2e-5:
            sys.exit("the PyTorch re-statement does not match the official outputs; not timing it")
        model, label = build(folder_cfg), "PyTorch (re-statement, checked against official goldens)"
    else:
        # The official class builds the named DINOv2-S (12 blocks); the Rust side resolves the
        # same name when no explicit sizes are given.
        model, label = official, "PyTorch (official vggt Aggregator)"
        folder_cfg["dinov2"] = dino = None
    randomise(model, seed=2024)

    images = torch.rand(1, args.views, 3, args.height, args.width, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        outputs = model(images)
        outputs = outputs[0] if isinstance(outputs, tuple) else outputs
        median, fastest = time_runs(lambda: model(images), args.runs)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="vggt_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"aggregator.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"))
    case = {"images": images.contiguous(), **{f"output.{i}": o.contiguous() for i, o in enumerate(outputs)}}
    save_file(case, str(folder / "case_bench.safetensors"))
    folder_cfg["cases"] = [{"name": "bench", "file": "case_bench.safetensors"}]
    (folder / "config.json").write_text(json.dumps(folder_cfg, indent=2))

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    if args.candle_bin:
        cmd = [str(args.candle_bin), str(folder), "--runs", str(args.runs)]
    else:
        cmd = ["cargo", "run", "--quiet", "--profile", args.cargo_profile, "-p", "roomplan-trainer", "--example",
               "bench_vggt", "--", str(folder), "--runs", str(args.runs)]
    ours = json.loads(subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
                      .stdout.strip().splitlines()[-1])

    tokens = 5 + (args.height // 14) * (args.width // 14)
    dino_blocks = 12 if dino is None else dino["depth"]
    print(f"config: width 384, DINOv2 {dino_blocks} blocks, 4 frame + 4 global blocks, {args.views} views of "
          f"{args.height}x{args.width} ({tokens} tokens/view), float32, {args.threads} threads, "
          f"median of {args.runs} runs")
    print(f"| implementation | ms / forward (median) | ms / view | min ms / forward |")
    print(f"|---|---|---|---|")
    print(f"| {label} | {median:.1f} | {median / args.views:.1f} | {fastest:.1f} |")
    candle_label = f"{args.candle_bin}" if args.candle_bin else f"{args.cargo_profile} profile"
    print(f"| candle (roomplan-trainer, {candle_label}) | {ours['median_ms']:.1f} | {ours['median_ms_per_view']:.1f} | "
          f"{ours['min_ms']:.1f} |")
    print(f"candle vs PyTorch last layer: max abs diff {ours['last_layer_max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
