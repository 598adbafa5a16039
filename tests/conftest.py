"""Fixtures and helpers shared by the test modules (import plain helpers with `from conftest import …`).

The CLI audit workspace (a tiny model folder, images, split files, a config file) and its
uninterrupted reference run are built once per test session, inside the session's base temp
folder, so every module that needs them (reliability, CLI errors, two processes) reuses the same
files without any module holding state.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit.audit.presets import audit_preset_dict

# Tiny models on 2 shared cores: one intra-op thread avoids oversubscription (a tiny UNet forward
# took 0.9 s with 2 threads and 8 ms with 1 while another process kept both cores busy).
torch.set_num_threads(int(os.environ.get("DIFFAUDIT_TEST_THREADS", "1")))

N_MEMBERS = 10  # the CLI workspace: 10 + 10 samples in chunks of 2, so 10 chunks
TINY_CONFIG = audit_preset_dict("tiny", chunk_size=2, batch_size=2)  # the workspace's config file


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class _PicklePayload:
    """Unpickling this creates a file: it stands in for arbitrary code in a crafted checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def pickle_payload():
    """`pickle_payload(path)`: an object whose unpickling creates `path` (proof that code ran)."""
    return lambda path: _PicklePayload(str(path))


# -- the command line, in this process or as a child --

def run_cli(args, capsys=None) -> tuple[int, str, str]:
    """`diffaudit ARGS` in this process: (exit code, stdout, stderr)."""
    from diffaudit import cli

    code = 0
    try:
        cli.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def subprocess_env() -> dict:
    """The same thread count as this process, so floating-point sums agree to the last bit."""
    n = str(torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore"}


# -- the CLI audit workspace, built once per session --

def workspace(tmp_path_factory) -> dict:
    """Tiny model folder, npz images, split files (via the CLI) and config file of this session.

    Built on first use under the session's base temp folder; the config file is written last, so
    its presence means a complete workspace (a half-built one is rebuilt).
    """
    root = tmp_path_factory.getbasetemp() / "audit-workspace"
    paths = dict(root=root, model=root / "model", members=root / "splits" / "members.json",
                 heldout=root / "splits" / "heldout.json", config=root / "cfg.json")
    if paths["config"].exists():
        return paths
    from diffaudit.models.tiny import save_tiny_model_folder

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    save_tiny_model_folder(paths["model"], kind="latent", image_size=8, image_channels=1)
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", images=rng.integers(0, 256, (2 * N_MEMBERS + 4, 8, 8), dtype=np.uint8))
    code, _, _ = run_cli(["split", f"npz:{root / 'images.npz'}", "--members", N_MEMBERS, "--out", root / "splits"])
    assert code == 0
    paths["config"].write_text(json.dumps(TINY_CONFIG))
    return paths


def audit_args(ws: dict, out: Path) -> list:
    return ["audit", "--model", ws["model"], "--members", ws["members"], "--holdout", ws["heldout"],
            "--config", ws["config"], "--out", out, "--no-progress"]


def reference_results(tmp_path_factory) -> dict:
    """`comparable` results.json of one uninterrupted single-process audit of the workspace.

    Run once per session (a rerun reuses its finished files: the audit resumes)."""
    ws = workspace(tmp_path_factory)
    out = ws["root"] / "reference"
    if not (out / "results.json").exists():
        code, _, _ = run_cli(audit_args(ws, out))
        assert code == 0
    return comparable(out / "results.json")


def comparable(path: Path) -> dict:
    """results.json without the fields that legitimately differ between runs."""
    r = json.loads(Path(path).read_text())
    r.pop("created")
    r.pop("timing")
    return r


def chunk_ids(store: Path) -> np.ndarray:
    ids = []
    for p in sorted(store.glob("chunk-*.npz")):
        with np.load(p) as z:
            ids.append(z["id"])
    return np.concatenate(ids)


def assert_each_sample_once(out: Path, ws: dict) -> None:
    n = 2 * N_MEMBERS
    for store in ("geometry", "attacks"):
        assert chunk_ids(out / "cache" / store).tolist() == list(range(n)), store
    keys = [it["key"] for f in (ws["members"], ws["heldout"]) for it in json.loads(Path(f).read_text())["items"]]
    lines = (out / "samples.csv").read_text().splitlines()[1:]
    assert [ln.split(",")[1] for ln in lines] == keys  # each sample once, in order
