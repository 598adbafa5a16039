"""`diffaudit demo`: split an embedded data set, get the tiny LDM trained on its members, audit, report.

The README's first command (`diffaudit demo`: digits, seed 0) audits the LDM that `diffaudit train`
makes on that split, shipped inside the package (`demo_models/digits-seed0/`, with the commands
that made it and its files' hash in `bundle.json`), so a newcomer waits for the audit only.
`--train` runs the whole pipeline here; so do another seed or data set, `--quick` and explicit
step counts, which no shipped model matches.

Every stage is resumable: the split files, the model (or the training checkpoints) and the
audit's chunks are all kept under the output folder, so rerunning the same command continues
where it stopped.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from .plan import AuditConfig, attacks_for

DEMOS = {"digits": ("digits", "digits"), "fashion-mnist": ("fashion-mnist", "fashion-mnist")}
BUNDLED_MODELS = Path(__file__).with_name("demo_models")

# A reduced demo for tests and quick looks: fewer samples and steps, the "quick" audit preset.
QUICK = {"n": 64, "vae_steps": 30, "unet_steps": 30, "audit_preset": "quick"}


def bundled_model(data: str, seed: int) -> Path | None:
    """The shipped model folder for (data, seed), or None when none ships."""
    folder = BUNDLED_MODELS / f"{data}-seed{seed}"
    return folder if (folder / "bundle.json").is_file() else None


def install_bundled_model(bundle: Path, target: Path, members, heldout) -> dict:
    """Copy the shipped model into `target` (once) after checking it belongs to this split; its diffaudit.json.

    The shipped files are checked against the hash recorded when they were made, so a damaged
    install is an error, not a silently different audit.
    """
    from ..errors import ConfigError, DataError, ModelError
    from .fingerprint import model_folder_hash

    info = json.loads((bundle / "bundle.json").read_text())
    for split, want in ((members, info["split"]["members_sha256"]), (heldout, info["split"]["heldout_sha256"])):
        if split.digest() != want:
            raise DataError(f"{split.path}: differs from the {split.role} split the bundled model {bundle.name} was "
                            "trained on (has the data set changed?); rerun with --train")
    if not target.exists():
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(bundle, tmp)
        tmp.replace(target)
    if model_folder_hash(target) != info["model_sha256"]:
        if model_folder_hash(bundle) != info["model_sha256"]:
            raise ModelError(f"{bundle}: the shipped model files differ from those recorded in its bundle.json; "
                             "reinstall diffaudit, or rerun with --train")
        raise ConfigError(f"{target} holds another model than the bundled {bundle.name}; use another --out, or --train")
    return json.loads((target / "diffaudit.json").read_text())


def run_demo(out_dir: str | Path = "diffaudit-report", data: str = "digits", seed: int = 0, quick: bool = False,
             train: bool = False, config: AuditConfig | None = None, progress: bool = True,
             overwrite: bool = False, n_members: int | None = None, vae_steps: int | None = None,
             unet_steps: int | None = None, log=print, processes: int = 1):
    from ..data import load_split_pair, make_split, open_source, write_split
    from ..errors import ConfigError
    from ..models import LatentDiffusion
    from ..train import get_preset, train_ldm
    from . import model_folder_hash
    from .presets import audit_preset

    if data not in DEMOS:
        raise ConfigError(f"unknown demo data {data!r}; choose one of {', '.join(DEMOS)}")
    spec, preset_name = DEMOS[data]
    preset = get_preset(preset_name)
    out = Path(out_dir)
    n_m = n_members or (QUICK["n"] if quick else preset.n_members)
    n_h = n_m if n_members or quick else preset.n_holdout
    if quick:
        vae_steps = vae_steps or QUICK["vae_steps"]
        unet_steps = unet_steps or QUICK["unet_steps"]
        config = config or audit_preset(QUICK["audit_preset"], seed=seed)
    config = config or AuditConfig(seed=seed, attacks=attacks_for(conditional=False))  # the demo LDM is unconditional
    default_model = not (train or quick or n_members or vae_steps or unet_steps)
    bundle = bundled_model(data, seed) if default_model else None

    t0 = time.perf_counter()
    # 1. The split: members / held-out files with content hashes (reused when already there).
    src = open_source(spec, size=preset.resolution, channels=preset.vae_config.get("in_channels", 1))
    mpath, hpath = out / "split" / "members.json", out / "split" / "heldout.json"
    if not (mpath.exists() and hpath.exists()):
        log(f"[1/3] splitting {spec}: {n_m} members / {n_h} held-out (seed {seed})")
        m, h = make_split(src, n_m, n_h, seed)
        write_split(m, mpath)
        write_split(h, hpath)
    members, heldout = load_split_pair(mpath, hpath)
    if len(members) != n_m or len(heldout) != n_h:
        raise ConfigError(f"{out / 'split'} holds a split of another size; use another --out or --overwrite")
    split_info = {"members": {"path": str(mpath), "sha256": members.digest(), "n": len(members)},
                  "heldout": {"path": str(hpath), "sha256": heldout.digest(), "n": len(heldout)}}

    # 2. The tiny LDM trained on the members only: shipped, or trained here (resumable).
    model_dir = out / "model"
    if bundle is not None:
        log(f"[2/3] the {preset.name} LDM trained on these {len(members)} members ships with diffaudit "
            f"({bundle.name}); --train trains it here instead")
        meta = install_bundled_model(bundle, model_dir, members, heldout)
    else:
        if model_dir.exists() and not (model_dir / "checkpoints" / "run.json").exists():
            raise ConfigError(f"{model_dir} holds the bundled model, not a training run; use another --out to train")
        if default_model:
            log(f"no model ships for {data} at seed {seed}: it is trained here")
        log(f"[2/3] training the {preset.name} LDM on {len(members)} members (resumable)")
        images = torch.stack([src.load(k)[0] for k in members.keys])
        meta = train_ldm(images, preset, model_dir, seed=seed, progress=progress, vae_steps=vae_steps,
                         unet_steps=unet_steps, split_info=split_info)

    # 3. Audit members vs held-out, in `processes` local processes (one torch thread each unless
    # set otherwise): each computes its share of the chunks, every draw is keyed by sample, so the
    # stored numbers are those of one process.
    log("[3/3] auditing: geometry, attacks over t, masks, metrics, report"
        + (f" ({processes} processes)" if processes > 1 else ""))
    model_info = {"path": str(model_dir), "preset": preset.name, "sha256": model_folder_hash(model_dir),
                  "train": {"steps": meta.get("steps"), "final_losses": meta.get("final_losses"),
                            "times_s": meta.get("times_s")}}
    if bundle is not None:
        model_info["bundled"] = bundle.name
    job = (out, model_dir, mpath, hpath, config, model_info, split_info, overwrite, progress, log, torch.get_num_threads())
    if processes > 1:
        import pickle

        from ..distributed import run_local_processes

        try:  # the workers are spawned: a log that does not pickle (a lambda) becomes print
            pickle.dumps(log)
        except (pickle.PicklingError, AttributeError, TypeError):
            job = job[:9] + (print,) + job[10:]
        result = run_local_processes(audit_worker, job, processes)
    else:  # only here does this process load the model: a worker loads its own (4 s, measured)
        result = audit_worker(*job, model=LatentDiffusion.from_pretrained(model_dir))
    result.results["timing"]["demo_total_s"] = time.perf_counter() - t0
    return result


def audit_worker(out, model_dir, mpath, hpath, config, model_info, split_info, overwrite, progress, log, threads,
                 model=None):
    """The demo's audit stage in one process of a local group (or alone); rank 0's AuditResult, else None."""
    from ..data import load_split_pair
    from ..distributed import process_group
    from ..models import LatentDiffusion
    from . import SampleSet, run_audit

    torch.set_num_threads(threads)
    with process_group("cpu") as pg:
        model = model or LatentDiffusion.from_pretrained(model_dir)
        members, heldout = load_split_pair(mpath, hpath)
        samples = SampleSet.from_splits(members, heldout, image_shape=model.image_shape, cond="none")
        return run_audit(model, samples, config, out_dir=out, model_info=model_info,
                         split_info=split_info, overwrite=overwrite, progress=progress and pg.is_main,
                         rank=pg.rank, world_size=pg.world_size, barrier=pg.barrier,
                         log=log if pg.is_main else None)
