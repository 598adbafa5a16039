"""Latent usage of the demo's β-VAE alone, at several seeds: does the decoder use every channel?

    python benchmarks/vae_latent_usage.py --seeds 0,1,2,3,4 [--set vae_steps=600] [--tag NAME]

For each seed, exactly as `diffaudit demo --train --seed S` does before the UNet stage: draw the
digits split (512 members / 512 held-out, 16², seed S), train only the preset's β-VAE on the
members (`train_ldm` with `unet_steps=0`, training seed S), then compute the audit's per-dimension
influence ½·log diag(JᵀJ) (Hutchinson, the audit's probes keyed by (S, sample key, "influence"))
on all 1024 samples and summarise it with the audit's own `latent_usage` (a dim is active when it
is within `active_nats` of its sample's most influential dim). Also records the per-channel KL and
latent std, the final training losses and the VAE's training time.

Writes benchmarks/results/vae_latent_usage_<preset>[_<tag>].json. A recipe is judged here on
latent usage and training loss only, never on attack AUC (no UNet is trained).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def measure_seed(preset, seed: int, work: Path, n_probes: int, active_nats: float, k: int) -> dict:
    from diffaudit.audit.assemble import latent_usage
    from diffaudit.data import make_split, open_source
    from diffaudit.geometry import influence
    from diffaudit.models import LatentDiffusion
    from diffaudit.rng import sample_generator
    from diffaudit.train import train_ldm
    from diffaudit.train.models import kl_per_element

    src = open_source("digits", size=preset.resolution, channels=1)
    members, heldout = make_split(src, preset.n_members, preset.n_holdout, seed)
    keys = list(members.keys) + list(heldout.keys)
    images = torch.stack([src.load(k)[0] for k in keys])
    n_m = len(members.keys)
    t0 = time.perf_counter()
    meta = train_ldm(images[:n_m], preset, work / f"s{seed}", seed=seed, unet_steps=0, progress=False)
    train_s = time.perf_counter() - t0
    model = LatentDiffusion.from_pretrained(work / f"s{seed}")
    infl = []
    for s in range(0, len(keys), 64):  # the audit's default batch; draws are keyed per sample
        with torch.no_grad():
            z = model.encode(images[s:s + 64]).float()
        gens = [sample_generator(seed, key, "influence") for key in keys[s:s + 64]]
        infl.append(influence(model.decode, z, n_probes=n_probes, generator=gens).detach())
    infl = torch.cat(infl)
    usage = latent_usage(infl.reshape(len(keys), -1).numpy(), list(infl.shape[1:]), k, active_nats)
    usage.pop("dim_mean_influence")
    with torch.no_grad():
        post = model.vae.encode(images[:n_m]).latent_dist
        kl = kl_per_element(post.mean, post.logvar).mean(dim=(0, 2, 3)).tolist()
        std = post.mean.std(dim=(0, 2, 3)).tolist()
    return {"seed": seed, "channel_active_share": usage["channel_active_share"],
            "min_channel_active_share": min(usage["channel_active_share"]), "usage": usage,
            "kl_per_channel": kl, "latent_std_per_channel": std,
            "final_losses": meta["final_losses"]["vae"], "loss_curve": meta["loss_curves"]["vae"],
            "vae_train_s": train_s, "vae_cpu_s": meta["cpu_s"]["vae"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--set", action="append", default=[], help="preset field=value (JSON value)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="training folders (default: a temp dir)")
    ap.add_argument("--n-probes", type=int, default=8)
    ap.add_argument("--active-nats", type=float, default=3.0)
    ap.add_argument("--k", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffaudit.train import get_preset

    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    preset = get_preset(args.preset).with_overrides(**overrides)
    work = Path(args.work or tempfile.mkdtemp(prefix="vae_usage_"))
    record = {"preset": args.preset, "overrides": overrides, "vae_config": preset.vae_config,
              "beta_kl": preset.beta_kl, "vae_steps": preset.vae_steps, "vae_lr": preset.vae_lr,
              "vae_batch": preset.vae_batch, "n_probes": args.n_probes, "active_nats": args.active_nats,
              "threads": args.threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "load_avg_start": os.getloadavg(), "seeds": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        r = measure_seed(preset, seed, work, args.n_probes, args.active_nats, args.k)
        record["seeds"].append(r)
        print(json.dumps({k: r[k] for k in ("seed", "channel_active_share", "kl_per_channel",
                                            "latent_std_per_channel", "final_losses", "vae_train_s")}), flush=True)
    record["load_avg_end"] = os.getloadavg()
    record["all_channels_used"] = all(r["min_channel_active_share"] >= 0.5 for r in record["seeds"])
    out = Path(__file__).parent / "results" / (f"vae_latent_usage_{args.preset}" + (f"_{args.tag}" if args.tag else "") + ".json")
    out.write_text(json.dumps(record, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
