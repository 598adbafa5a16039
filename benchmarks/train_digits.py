"""Train a preset on sklearn digits fully, then measure leakage and latent usage quickly.

    python benchmarks/train_digits.py --seed 0 [--unet-eval-at 2000,3000,4000] [--set beta_kl=1e-4]

Writes benchmarks/results/train_digits_<preset>_s<seed>[_<tag>].json with: training time and
steps/s, final losses, per-channel latent usage (Hutchinson diag(JᵀJ) influence and KL), and
SimA / PIA AUC over t (members vs held-out, sklearn's roc_auc_score), plus SimA filtered at
k = 40 (drop the 40% least influential dims per sample, SPEC §4) vs random drop (10 draws) at
SimA's best t. Measured directly with the UNet so it does not depend on the audit pipeline.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from diffaudit.train import get_preset, train_ldm
from diffaudit.train.models import encode_latents, kl_per_element


def digits_split(resolution: int, n_members: int, n_holdout: int, split_seed: int = 0):
    """sklearn digits (0..16) resized to resolution² (bilinear), in [-1, 1]; seeded split."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x * 2 - 1).clamp(-1, 1)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(split_seed))
    mem, hold = perm[:n_members], perm[n_members : n_members + n_holdout]
    return x[mem], x[hold], torch.tensor(d.target)[mem]


@torch.no_grad()
def attack_aucs(unet, acp, z_mem, z_hold, ts):
    """SimA ‖ε̂(z,t)‖⁴ and PIA ‖ε₀ − ε̂(√ᾱ z + √(1−ᾱ) ε₀, t)‖⁴ (SPEC §1): AUC per t, and vectors."""
    z = torch.cat([z_mem, z_hold])
    y = np.r_[np.ones(len(z_mem)), np.zeros(len(z_hold))]

    def eps(x, t):
        return unet(x, torch.full((x.shape[0],), t, dtype=torch.long)).sample

    eps0 = eps(z, 0)
    sima, pia, sima_vec = {}, {}, {}
    for t in ts:
        e = eps(z, t)
        sima_vec[t] = e
        sima[t] = roc_auc_score(y, -(e.pow(4).flatten(1).sum(1)).numpy())
        if t > 0:
            a = acp[t]
            zt = a.sqrt() * z + (1 - a).sqrt() * eps0
            pia[t] = roc_auc_score(y, -((eps0 - eps(zt, t)).pow(4).flatten(1).sum(1)).numpy())
    return sima, pia, sima_vec, y


def hutchinson_diag(decode, z, n_probes=8, seed=0):
    """diag(JᵀJ) of decode at z by Hutchinson with Gaussian probes (SPEC §3)."""
    g = torch.Generator().manual_seed(seed)
    z = z.detach().requires_grad_(True)
    x = decode(z)
    acc = torch.zeros_like(z)
    for _ in range(n_probes):
        v = torch.randn(x.shape, generator=g)
        (jtv,) = torch.autograd.grad(x, z, v, retain_graph=True)
        acc += jtv.pow(2)
    return (acc / n_probes).detach()


def masked_auc(vec, keep, y):
    stat = (vec.pow(4) * keep).flatten(1).sum(1)
    return roc_auc_score(y, -stat.numpy())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unet-eval-at", default="", help="comma list: evaluate after these UNet steps too")
    ap.add_argument("--set", action="append", default=[], help="preset field=value (JSON value)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="training folder (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    preset = get_preset(args.preset).with_overrides(**overrides)
    x_mem, x_hold, _ = digits_split(preset.resolution, preset.n_members, preset.n_holdout)
    out = Path(args.out or tempfile.mkdtemp(prefix="train_digits_"))
    final_steps = preset.steps("unet", len(x_mem))
    evals = sorted({int(s) for s in args.unet_eval_at.split(",") if s} | {final_steps})
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel, VQModel

    record = {"preset": preset.to_dict(), "seed": args.seed, "threads": args.threads,
              "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(), "evals": []}
    wall0 = time.perf_counter()
    for steps in evals:
        meta = train_ldm(x_mem, preset, out, seed=args.seed, unet_steps=steps, progress=False)
        train_wall = time.perf_counter() - wall0
        vae = (VQModel if preset.vae_type == "vq" else AutoencoderKL).from_pretrained(out / "vae").eval()
        unet = UNet2DModel.from_pretrained(out / "unet").eval()
        acp = DDPMScheduler.from_pretrained(out / "scheduler").alphas_cumprod
        s = vae.config.scaling_factor
        z_mem, z_hold = encode_latents(vae, x_mem) * s, encode_latents(vae, x_hold) * s
        t_eval = time.perf_counter()
        sima, pia, vecs, y = attack_aucs(unet, acp, z_mem, z_hold, list(range(0, 300, 10)))
        z_all = torch.cat([z_mem, z_hold])
        diag = hutchinson_diag(lambda z: vae.decode(z / s).sample, z_all)
        infl = 0.5 * torch.log(diag + 1e-12)
        # k = 40: keep the 60% most influential dims of each sample
        flat = infl.flatten(1)
        d = flat.shape[1]
        n_keep = d - int(round(0.4 * d))
        keep = torch.zeros_like(flat).scatter_(1, flat.topk(n_keep, dim=1).indices, 1.0).view_as(infl)
        t_best = max(sima, key=sima.get)
        v = vecs[t_best]
        rand = []
        for r in range(10):
            g = torch.Generator().manual_seed(1000 + r)
            idx = torch.rand(flat.shape, generator=g).topk(n_keep, dim=1).indices
            rand.append(masked_auc(v, torch.zeros_like(flat).scatter_(1, idx, 1.0).view_as(infl), y))
        usage = {"influence_per_channel": infl.mean(dim=(0, 2, 3)).tolist()}
        if preset.vae_type == "kl":
            with torch.no_grad():
                post = vae.encode(x_mem).latent_dist
                usage["kl_per_channel"] = kl_per_element(post.mean, post.logvar).mean(dim=(0, 2, 3)).tolist()
        usage["latent_std_per_channel"] = z_mem.std(dim=(0, 2, 3)).tolist()
        ev = {
            "unet_steps": steps,
            "train_wall_s_cumulative": train_wall,
            "times_s": meta["times_s"],
            "cpu_s": meta.get("cpu_s"),
            "steps_per_s": meta["steps_per_s"],
            "final_losses": meta["final_losses"],
            "scaling_factor": s,
            "sima_auc": {str(k): v for k, v in sima.items()},
            "pia_auc": {str(k): v for k, v in pia.items()},
            "sima_best": [t_best, sima[t_best]],
            "pia_best": [max(pia, key=pia.get), max(pia.values())],
            "sima_filtered_k40_at_best_t": masked_auc(v, keep, y),
            "sima_random_drop_k40": [float(np.mean(rand)), float(np.std(rand))],
            "latent_usage": usage,
            "eval_s": time.perf_counter() - t_eval,
        }
        record["evals"].append(ev)
        print(json.dumps({k: ev[k] for k in ("unet_steps", "train_wall_s_cumulative", "final_losses",
                                            "sima_best", "pia_best", "sima_filtered_k40_at_best_t",
                                            "sima_random_drop_k40", "latent_usage")}), flush=True)
        wall0 = time.perf_counter() - train_wall  # exclude evaluation time from training wall time
    record["load_avg_end"] = os.getloadavg()
    res_dir = Path(__file__).parent / "results"
    res_dir.mkdir(exist_ok=True)
    name = f"train_digits_{args.preset}_s{args.seed}" + (f"_{args.tag}" if args.tag else "") + ".json"
    (res_dir / name).write_text(json.dumps(record, indent=2))
    print("wrote", res_dir / name)


if __name__ == "__main__":
    main()
