"""GSA's cost per sample: per-sample parameter gradients batched with torch.func (vmap(grad))
against the authors' loop of one backward pass per sample (GSA1) or per sample and timestep (GSA2),
and both against the bare forward rows the features need (K per sample).

    python benchmarks/bench_gsa.py [--quick] [--device cuda] [--n 16] [--k 10] [--out benchmarks/results/]

The model is the benchmarks' small UNet2DModel (digits-preset size, 4×8×8 latents, attention at
the bottom; `bench_models.small_unet`). The loops are the reference's extraction (github
py85252876/GSA, DDPM/gen_l2_gradients_DDPM.py): the K noisy copies as one batch, F.mse_loss,
backward, ‖p.grad‖ per parameter. Writes `gsa-<cpu|gpu>-<date>[-quick].json`.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import measure, peak_memory, ratio  # noqa: E402
from bench_models import small_unet  # noqa: E402


class Denoiser:
    """The model contract plus `denoiser` and `eps_with_grad` (gradient attacks) over a bare UNet2DModel."""

    def __init__(self, unet, device):
        from diffusers import DDPMScheduler

        self.unet = self.denoiser = unet.to(device)
        self.alphas_cumprod = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.to(device)

    @torch.no_grad()
    def eps(self, x, t, cond=None):
        return self.unet(x, t).sample

    def eps_with_grad(self, x, t, cond=None):
        return self.unet(x, t).sample


def loop_features(model, z, ts, noise, method):
    """The reference's loop: one backward per sample (GSA1) or per sample and t (GSA2)."""
    net = model.unet.requires_grad_(True)
    tt = torch.tensor(ts, device=z.device)
    a = model.alphas_cumprod.to(z.dtype)[tt].view(-1, 1, 1, 1)
    out = []
    for i in range(len(z)):
        e = noise[i]
        x = a.sqrt() * z[i] + (1 - a).sqrt() * e
        if method == 1:
            net.zero_grad(set_to_none=True)
            F.mse_loss(net(x, tt).sample, e).backward()
            out.append(torch.stack([p.grad.norm() for p in net.parameters()]))
        else:
            pred = net(x, tt).sample
            per = []
            for j in range(len(ts)):
                net.zero_grad(set_to_none=True)
                F.mse_loss(pred[j:j + 1], e[j:j + 1]).backward(retain_graph=j < len(ts) - 1)
                per.append(torch.stack([p.grad.norm() for p in net.parameters()]))
            out.append(torch.stack(per).mean(0))
    net.requires_grad_(False)
    return torch.stack(out)


def bench_gsa(device: str, n: int, k: int, quick: bool) -> dict:
    from diffaudit.attacks.gsa import gsa_features, gsa_timesteps

    model = Denoiser(small_unet(), device)
    shape = (4, 8, 8)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, *shape, generator=g).to(device)
    ts = gsa_timesteps(None, k, 1000)
    noise = torch.randn(n, k, *shape, generator=g).to(device)

    def noise_fn(t):
        return noise[:, ts.index(t)]

    tt = torch.tensor(ts, device=device).repeat(n)
    rows = z.repeat_interleave(k, 0)

    @torch.no_grad()
    def forward_rows():  # the bare forward rows the features need: K per sample, one batch
        return model.unet(rows, tt).sample

    # equal features first, relative to each sample's largest feature: float32 sums in another
    # order, and some norms are round-off only (an attention key bias has zero gradient, as
    # softmax ignores a shift shared by all keys), in the reference as here
    agree = {}
    for method in (1, 2):
        v = gsa_features(model, z, None, noise_fn=noise_fn, method=method, n_timesteps=k)
        lo = loop_features(model, z, ts, noise, method)
        err = ((v - lo).abs() / lo.abs().amax(1, keepdim=True)).max().item()
        agree[f"gsa{method}_max_err_rel_to_largest_feature"] = err
        if err > 1e-4:
            raise RuntimeError(f"GSA{method}: vmap and loop features differ (max err {err:.2e} of the largest)")

    candidates = {
        "forward_rows": forward_rows,
        "gsa1_vmap": lambda: gsa_features(model, z, None, noise_fn=noise_fn, method=1, n_timesteps=k),
        "gsa1_loop": lambda: loop_features(model, z, ts, noise, 1),
        "gsa2_vmap": lambda: gsa_features(model, z, None, noise_fn=noise_fn, method=2, n_timesteps=k),
        "gsa2_loop": lambda: loop_features(model, z, ts, noise, 2),
    }
    times = measure(candidates, repeats=2 if quick else 5, device=device)
    per_sample = {name: t["min_s"] / n for name, t in times.items()}
    return {
        "n_samples": n, "n_timesteps": k, "timesteps": ts, "latent_shape": list(shape),
        "n_parameter_tensors": len(list(model.unet.parameters())),
        "n_parameters": sum(p.numel() for p in model.unet.parameters()),
        "per_sample_s": per_sample,
        "speedup_vmap_vs_loop": {"gsa1": ratio(times, "gsa1_loop", "gsa1_vmap"),
                                 "gsa2": ratio(times, "gsa2_loop", "gsa2_vmap")},
        "cost_in_forward_rows_equivalents": {  # per sample, relative to its K bare forward rows
            m: per_sample[m] / per_sample["forward_rows"] for m in ("gsa1_vmap", "gsa2_vmap", "gsa1_loop", "gsa2_loop")},
        "vmap_vs_loop_agreement": agree,
        "peak_memory_gib": peak_memory(device),
        "times": times,
    }


def main(argv=None) -> dict:
    from run import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"machine": machine_info(args.device, args.threads),
              "gsa": bench_gsa(args.device, args.n, args.k, args.quick)}
    kind = "gpu" if torch.device(args.device).type == "cuda" else "cpu"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / f"gsa-{kind}-{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    r = result["gsa"]
    print(f"GSA on {r['n_parameters']} parameters ({r['n_parameter_tensors']} tensors), "
          f"{r['n_samples']} samples × {r['n_timesteps']} t")
    for name, s in r["per_sample_s"].items():
        print(f"  {name:13s} {1e3 * s:8.2f} ms/sample")
    for m, rr in r["speedup_vmap_vs_loop"].items():
        print(f"  {m}: vmap {rr['min']:.2f}× faster than the loop (median {rr['median']:.2f}×)")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
