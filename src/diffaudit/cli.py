"""Command line: argument parsing, printing and exit codes only; the work lives in the library.

Each command imports its library module lazily so `diffaudit --help` stays fast.
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from .errors import DiffauditError

app = typer.Typer(
    name="diffaudit",
    help="Membership-inference audits of (latent) diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    """`--debug` is read by `main` before parsing, so it also covers errors raised while parsing."""


def echo(msg: str = "") -> None:
    typer.echo(msg)


def _show_results(results: dict, report_path: Path) -> None:
    """The summary table, then the warnings results.json carries, then where the report is."""
    from .report import summary_table

    echo(summary_table(results))
    for w in results.get("warnings") or []:
        echo(f"warning: {w}")
    echo(f"report: {report_path}")


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """With `--no-progress`, silence every bar: diffaudit's own (their `progress` argument) and the
    ones diffusers and transformers draw while loading weights; restored afterwards."""
    if enabled:
        yield
        return
    import importlib.util

    import diffusers.utils.logging as dlog

    tlog = None
    if importlib.util.find_spec("transformers") is not None:
        import transformers.utils.logging as tlog
    before = dlog.is_progress_bar_enabled(), tlog is not None and tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    if tlog is not None:
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        if before[0]:
            dlog.enable_progress_bar()
        if before[1]:
            tlog.enable_progress_bar()


# -- commands begin (one function per command; keep bodies thin) --
@app.command()
def demo(
    out: Path = typer.Option(Path("diffaudit-report"), "--out", help="Report folder (also holds the split, model and cache)."),
    data: str = typer.Option("digits", "--data", help="digits (bundled with scikit-learn) or fashion-mnist (Debian's dataset-fashion-mnist)."),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(False, "--quick", help="A reduced run (64+64 samples, few steps): a smoke test, not a result."),
    train: bool = typer.Option(False, "--train", help="Train the LDM here even where diffaudit ships it (digits, seed 0)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard cached audit results made with another config."),
    no_progress: bool = typer.Option(False, "--no-progress"),
    processes: int | None = typer.Option(None, "--processes", min=1, help="Audit processes on this machine "
                                         "(torchrun's launcher; each computes its share of the chunks, so the "
                                         "numbers do not depend on it). Default: the usable cores, at most 4."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads per process. One keeps the numbers "
                                "independent of the machine (more threads change float rounding)."),
):
    """Audit a tiny latent diffusion model trained on embedded data (shipped for digits, seed 0), write a report."""
    import torch

    from .audit.demo import run_demo

    if processes is None:
        processes = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(threads)

    with _progress_bars(not no_progress):
        result = run_demo(out, data=data, seed=seed, quick=quick, train=train, overwrite=overwrite,
                          progress=not no_progress, log=echo, processes=processes)
    _show_results(result.results, out / "report.html")


@app.command()
def audit(
    model: Path = typer.Option(..., "--model", help="Model folder (diffusers layout or a Stable Diffusion pipeline)."),
    members: Path = typer.Option(..., "--members", help="Member split file (diffaudit split)."),
    holdout: Path = typer.Option(..., "--holdout", help="Held-out split file."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON or TOML audit config (see README)."),
    out: Path = typer.Option(Path("diffaudit-report"), "--out"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where the split's images live now, if moved."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype", help="UNet precision: float32, float16 or bfloat16 (geometry stays float32)."),
    cond: str = typer.Option("auto", "--cond", help="auto | none | caption | label"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    resize: bool = typer.Option(False, "--resize", help="Resize images of different sizes to the model's "
                                "(otherwise refused); every conversion is counted in results.json."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    no_progress: bool = typer.Option(False, "--no-progress"),
    lora: Optional[list[str]] = typer.Option(None, "--lora", help="LoRA safetensors PATH[:SCALE] applied to the model "
                                             "(repeatable; diffusers or kohya format; needs the 'lora' extra)."),
    processes: int = typer.Option(1, "--processes", min=1, help="CPU audit processes on this machine (torchrun's "
                                  "launcher), one torch thread each: the numbers equal one process's with "
                                  "OMP_NUM_THREADS=1. For GPUs or machines: accelerate launch / torchrun."),
):
    """Audit a model on a member and a held-out split; resumable (rerun the same command)."""
    job = (model, members, holdout, config, out, data_root, device, dtype, cond, seed, resize, overwrite,
           no_progress, lora)
    if processes > 1:
        from .distributed import launched_distributed, run_local_processes
        from .errors import ConfigError

        if device != "cpu":
            raise ConfigError(f"--processes starts CPU processes, not for --device {device}: launch GPU audits "
                              "with accelerate launch or torchrun (README, 'Many GPUs')")
        if launched_distributed():
            raise ConfigError("--processes inside a launched run (WORLD_SIZE > 1): use one or the other")
        result = run_local_processes(_audit_files, (*job, 1), processes)  # one torch thread per worker
    else:
        result = _audit_files(*job)
    if result is not None:
        _show_results(result.results, out / "report.html")


def _audit_files(model, members, holdout, config, out, data_root, device, dtype, cond, seed, resize, overwrite,
                 no_progress, lora, threads=None):
    """`diffaudit audit` in this process (alone, or one rank of a group) with `threads` torch
    threads (None: as set); rank 0's AuditResult, else None."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from .audit import SampleSet, load_config, model_folder_hash, run_audit
    from .data import load_split_pair
    from .distributed import process_group
    from .models import LatentDiffusion
    from .models.lora import parse_lora_arg

    cfg = load_config(config, cond=cond, seed=seed)
    m_split, h_split = load_split_pair(members, holdout, root=data_root)
    with process_group(device) as pg, _progress_bars(not no_progress):
        lm = LatentDiffusion.from_pretrained(model, device=pg.device, dtype=dtype,
                                             lora=[parse_lora_arg(a) for a in lora or ()])
        samples = SampleSet.from_splits(m_split, h_split, image_shape=lm.image_shape, cond=cfg.cond,
                                        conditioning=lm.conditioning, resize=resize)
        split_info = {"members": {"path": str(members), "sha256": m_split.digest(), "n": len(m_split)},
                      "heldout": {"path": str(holdout), "sha256": h_split.digest(), "n": len(h_split)}}
        info = {"path": str(model), "sha256": model_folder_hash(model, lora=getattr(lm, "loras", None) or ())}
        return run_audit(lm, samples, cfg, out_dir=out, model_info=info, split_info=split_info, overwrite=overwrite,
                         progress=not no_progress and pg.is_main, rank=pg.rank, world_size=pg.world_size,
                         barrier=pg.barrier, log=echo)


@app.command()
def split(
    source: str = typer.Argument(..., help="digits, fashion-mnist, folder:PATH, npz:PATH, idx:PATH or hf:PATH"),
    members: int = typer.Option(..., "--members", help="Number of member images."),
    heldout: Optional[int] = typer.Option(None, "--heldout", help="Number of held-out images (default: = members)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random assignment."),
    out: Path = typer.Option(..., "--out", help="Folder for members.json and heldout.json."),
):
    """Draw a random, seeded member/held-out split with a pixel hash of every image."""
    from .data import make_split_files

    m, h = make_split_files(source, members, heldout if heldout is not None else members, seed, out)
    echo(f"wrote {m} ({members} members) and {h} ({heldout if heldout is not None else members} held out)")


@app.command()
def train(
    members: Path = typer.Option(..., "--members", help="Member split file (diffaudit split): the images trained on."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (vae/, unet/, scheduler/, diffaudit.json)."),
    preset: str = typer.Option("digits", "--preset", help="digits, fashion-mnist, cifar10-paper, celeba-paper, mnist-paper, digits-vq."),
    data: Optional[str] = typer.Option(None, "--data", help="Data source spec; must match the split's (default: the split's)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where the split's images live now, if moved."),
    seed: int = typer.Option(0, "--seed"),
    vae_steps: Optional[int] = typer.Option(None, "--vae-steps", help="Override the preset's VAE steps."),
    unet_steps: Optional[int] = typer.Option(None, "--unet-steps", help="Override the preset's UNet steps (may grow on a finished run)."),
    class_conditional: bool = typer.Option(False, "--class-conditional", help="Condition the UNet on the images' labels."),
    device: str = typer.Option("cpu", "--device"),
    no_progress: bool = typer.Option(False, "--no-progress"),
):
    """Train the paper's β-VAE + latent DDPM on a member split; resumable (rerun the same command)."""
    from .train import get_preset, load_split_images, train_ldm

    p = get_preset(preset)
    images, labels, split_info = load_split_images(members, p.resolution, data_root, class_conditional, data)
    with _progress_bars(not no_progress):
        meta = train_ldm(images, p, out, labels=labels, seed=seed, progress=not no_progress, vae_steps=vae_steps,
                         unet_steps=unet_steps, class_conditional=class_conditional, device=device,
                         split_info=split_info)
    losses = meta["final_losses"]
    echo(f"trained {p.name} on {meta['n_members']} members: VAE loss {losses['vae']['loss']:.4f}, "
         f"UNet loss {losses['unet']['loss']:.4f} ({meta['times_s']['vae'] + meta['times_s']['unet']:.0f} s)")
    echo(f"model: {out}")


@app.command()
def dynamics(
    model: Path = typer.Option(..., "--model", help="Model folder (text-conditioned, e.g. a Stable Diffusion pipeline)."),
    prompts: Path = typer.Option(..., "--prompts", help="JSON lines {prompt, image?, memorized?, id?} or caption[TAB image[TAB 0/1]] lines."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of the paired training images named in the prompts file."),
    seeds: int = typer.Option(10, "--seeds", help="Generations per prompt."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale w."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps."),
    delays: str = typer.Option("5,10", "--delays", help="Mitigation: guidance delayed for these first m steps (comma list; empty: none)."),
    similarity: str = typer.Option("latent", "--similarity", help="Severity fallback: latent or pixel cosine similarity."),
    embedder: Optional[Path] = typer.Option(None, "--embedder", help="Local SSCD-style TorchScript embedding model for severity."),
    prompt_batch: int = typer.Option(1, "--prompt-batch", help="Prompts sampled together in one UNet batch."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype", help="UNet dtype: float32, float16 (GPU) or bfloat16."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("dynamics-report"), "--out", help="Report folder (rerun to resume)."),
    no_progress: bool = typer.Option(False, "--no-progress"),
):
    """Memorization dynamics of a text-to-image model (Kim et al. 2025, arXiv 2503.18624; docs/contracts.md)."""
    from .analysis.dynamics import DynamicsConfig, run_dynamics, torchscript_embedder
    from .errors import InputError
    from .models import LatentDiffusion

    try:
        ms = tuple(int(m) for m in delays.split(",") if m.strip())
    except ValueError:
        raise InputError(f"--delays must be a comma list of integers, got {delays!r}") from None
    cfg = DynamicsConfig(seeds=seeds, guidance=guidance, steps=steps, seed=seed, delays=ms, similarity=similarity)
    with _progress_bars(not no_progress):
        ld = LatentDiffusion.from_pretrained(model, device=device, dtype=dtype)
        emb = torchscript_embedder(embedder, device=device) if embedder is not None else None
        s = run_dynamics(ld, prompts, out, images, cfg, emb, progress=not no_progress, prompt_batch=prompt_batch)
    echo(f"{s['n_prompts']} prompts analysed; report in {out}")
    for name, m in s["detectors"].items():
        if m["auc"] is not None:
            echo(f"  {name:12s} AUC {m['auc']:.3f}  TPR@1%FPR {m['tpr_at_1pct_fpr']:.3f}")
    c = s["severity_correlation"].get("D0_guided")
    if c and c["pearson"] is not None:
        echo(f"  D0 vs severity: Pearson r {c['pearson']:.3f}, Spearman {c['spearman']:.3f} (n={c['n']})")


@app.command()
def report(
    folder: Path = typer.Argument(..., help="A report folder holding results.json (and samples.csv)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the report here instead of into FOLDER."),
):
    """Render the report again (HTML, plots, CSVs) from a folder's results.json and samples.csv."""
    import json

    from .report import rewrite_report

    paths = rewrite_report(folder, out)
    _show_results(json.loads(paths["results.json"].read_text()), paths["report.html"])


@app.command("dataset-test")
def dataset_test(
    model: Path = typer.Option(..., "--model", help="Model folder."),
    suspect: str = typer.Option(..., "--suspect", help="Images claimed used in training: a split file or a source spec (folder:PATH, npz:PATH, …)."),
    reference: str = typer.Option(..., "--reference", help="Images known unused, same distribution: a split file or a source spec."),
    out: Path = typer.Option(..., "--out", help="Folder for dataset-test.json, results.json and the cache (rerun to resume)."),
    alpha: float = typer.Option(0.01, "--alpha", help="Level of the test."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON or TOML audit config (see README)."),
    folds: int = typer.Option(2, "--folds", help="Cross-fitting folds (combined by Bonferroni)."),
    repeats: int = typer.Option(100, "--repeats", help="Subsamples per size for the images-needed curve."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    no_progress: bool = typer.Option(False, "--no-progress"),
):
    """Dataset inference (CDI): a p-value that the suspect images were used to train the model."""
    from .audit import load_config, model_folder_hash
    from .audit.dataset_test import open_side, run_dataset_test
    from .models import LatentDiffusion

    cfg = load_config(config, seed=seed)
    p_split, u_split = open_side(suspect, "suspect"), open_side(reference, "reference")
    lm = LatentDiffusion.from_pretrained(model, device=device)
    doc = run_dataset_test(lm, p_split, u_split, cfg, out, alpha=alpha, folds=folds, repeats=repeats,
                           model_info={"path": str(model), "sha256": model_folder_hash(model)}, overwrite=overwrite,
                           progress=not no_progress, names={"suspect": suspect, "reference": reference})
    echo(f"p-value {doc['p_value']:.3g} ({doc['n_suspect']} suspect vs {doc['n_reference']} reference images)")
    echo(f"verdict: {doc['verdict']}")
    c = doc["images_needed"]
    for n, pw, (lo, hi) in zip(c["sizes"], c["power"], c["power_ci95"]):
        echo(f"  n = {n:6d}: p < {c['alpha']:g} in {pw:6.1%} of {c['repeats']} subsamples (95% CI {lo:.2f}-{hi:.2f})")
    echo(f"suspect images needed for power >= {c['target_power']:g}: {c['n_needed'] or 'more than ' + str(doc['n_suspect'])}")
    echo(f"results: {out / 'dataset-test.json'}")


# -- commands end --


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: runs the app. A DiffauditError becomes one line on stderr and exit code 2; a
    usage mistake (unknown option, missing argument) prints the usage message and exits 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="diffaudit", standalone_mode=False)
    except DiffauditError as e:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:
        if isinstance(e, typer.TyperException) and hasattr(e, "show"):  # typer's (vendored click) usage errors
            e.show()
            sys.exit(getattr(e, "exit_code", 2))
        if debug:
            raise
        typer.echo(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    if isinstance(code, int) and code:  # --help and the like return their exit code in this mode
        sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
