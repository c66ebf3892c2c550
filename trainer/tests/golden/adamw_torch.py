"""Writes adamw_torch.json: torch.optim.AdamW on two parameter groups, the golden values that
trainer/tests/optim_resume.rs checks our AdamW against.

Run by hand (needs torch; not run in CI):  python3 trainer/tests/golden/adamw_torch.py
Two groups with their own lr / weight decay, non-default betas and eps, a step where one parameter
has no gradient (its moments and step count must not move), and a learning-rate factor of 0.5 on the
last two steps (as a schedule would set it). Also torch.nn.utils.clip_grad_norm_ on two gradients,
once clipping and once not.
"""
import json
import math
import pathlib

import torch

torch.manual_seed(0)
w0 = [[0.5, -1.0, 2.0], [0.25, 0.0, -0.75]]
b0 = [0.1, -0.2, 0.3]
groups = [
    {"name": "decay", "lr": 0.05, "weight_decay": 0.1},
    {"name": "no_decay", "lr": 0.02, "weight_decay": 0.0},
]
betas, eps = (0.8, 0.95), 1e-6
steps = 5
lr_factors = [1.0, 1.0, 1.0, 0.5, 0.5]


def grad(shape, step, salt):
    n = math.prod(shape)
    vals = [math.sin(1.3 * (i + 1) + 0.7 * step + salt) * (1.0 + 0.5 * step) for i in range(n)]
    return torch.tensor(vals, dtype=torch.float32).reshape(shape)


w = torch.tensor(w0, dtype=torch.float32, requires_grad=True)
b = torch.tensor(b0, dtype=torch.float32, requires_grad=True)
opt = torch.optim.AdamW(
    [
        {"params": [w], "lr": groups[0]["lr"], "weight_decay": groups[0]["weight_decay"]},
        {"params": [b], "lr": groups[1]["lr"], "weight_decay": groups[1]["weight_decay"]},
    ],
    betas=betas,
    eps=eps,
    foreach=False,
)
record = []
for step in range(steps):
    for g, group in zip(opt.param_groups, groups):
        g["lr"] = group["lr"] * lr_factors[step]
    gw = grad((2, 3), step, 0.0)
    gb = None if step == 2 else grad((3,), step, 1.0)
    w.grad = gw.clone()
    b.grad = None if gb is None else gb.clone()
    opt.step()
    record.append(
        {
            "grad_w": gw.flatten().tolist(),
            "grad_b": None if gb is None else gb.tolist(),
            "lr_factor": lr_factors[step],
            "w": w.detach().flatten().tolist(),
            "b": b.detach().tolist(),
        }
    )

clips = []
for max_norm in (1.0, 100.0):
    w.grad = grad((2, 3), 7, 0.0)
    b.grad = grad((3,), 7, 1.0)
    before_w, before_b = w.grad.flatten().tolist(), b.grad.tolist()
    total = torch.nn.utils.clip_grad_norm_([w, b], max_norm)
    clips.append(
        {
            "max_norm": max_norm,
            "grad_w": before_w,
            "grad_b": before_b,
            "total_norm": float(total),
            "clipped_w": w.grad.flatten().tolist(),
            "clipped_b": b.grad.tolist(),
        }
    )

out = {
    "torch_version": torch.__version__,
    "w0": [x for row in w0 for x in row],
    "b0": b0,
    "groups": groups,
    "betas": betas,
    "eps": eps,
    "steps": record,
    "clip_grad_norm": clips,
    "final_step_counts": {"w": int(opt.state[w]["step"]), "b": int(opt.state[b]["step"])},
}
path = pathlib.Path(__file__).with_name("adamw_torch.json")
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
