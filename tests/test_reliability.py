"""Surviving SIGKILL (resume gives the uninterrupted run's results) and out-of-memory (halve, retry).

The audit CLI runs in a child process (first a fresh `python -m diffaudit`, then forks of the test
process, which start faster) on a tiny model folder and a split made by `diffaudit split`; it is
killed with SIGKILL at seeded random points, then rerun to completion. Helpers here are shared with
tests/test_distributed.py (the 1-process reference run is computed once per session).
"""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit import cli
from diffaudit.errors import DiffauditError

N_MEMBERS = 10  # 10 + 10 samples in chunks of 2: 10 chunks
TINY_CONFIG = dict(timesteps={"sima": [0, 20], "loss": [20], "pia": [20], "secmi": [0, 20]}, k=40, k_sweep=[0, 40],
                   n_random=2, n_probes=2, svd_rank=2, svd_block_size=2, svd_power_iters=1, bootstrap=20,
                   hf_timesteps=[20], strata_random=2, chunk_size=2, batch_size=2)


def run_cli(args, capsys=None) -> tuple[int, str, str]:
    """`diffaudit ARGS` in this process: (exit code, stdout, stderr)."""
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


_WORKSPACE: dict = {}


def workspace(tmp_path_factory) -> dict:
    """Tiny model folder, npz images, split files (via the CLI), config file; built once."""
    if _WORKSPACE:
        return _WORKSPACE
    from diffaudit.models.tiny import save_tiny_model_folder

    root = tmp_path_factory.mktemp("reliability")
    model = save_tiny_model_folder(root / "model", kind="latent", image_size=8, image_channels=1)
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", images=rng.integers(0, 256, (2 * N_MEMBERS + 4, 8, 8), dtype=np.uint8))
    code, _, _ = run_cli(["split", f"npz:{root / 'images.npz'}", "--members", N_MEMBERS, "--out", root / "splits"])
    assert code == 0
    (root / "cfg.json").write_text(json.dumps(TINY_CONFIG))
    _WORKSPACE.update(root=root, model=model, members=root / "splits" / "members.json",
                      heldout=root / "splits" / "heldout.json", config=root / "cfg.json")
    return _WORKSPACE


def audit_args(ws: dict, out: Path) -> list:
    return ["audit", "--model", ws["model"], "--members", ws["members"], "--holdout", ws["heldout"],
            "--config", ws["config"], "--out", out, "--no-progress"]


def reference_results(tmp_path_factory) -> dict:
    """results.json of one uninterrupted single-process run (cached for the session)."""
    ws = workspace(tmp_path_factory)
    if "reference" not in ws:
        out = ws["root"] / "reference"
        code, _, _ = run_cli(audit_args(ws, out))
        assert code == 0
        ws["reference"] = comparable(out / "results.json")
    return ws["reference"]


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


def _count_chunks(out: Path) -> int:
    return len(list((out / "cache" / "attacks").glob("chunk-*.npz")))


class _Forked:
    """`diffaudit ARGS` in a child forked from this process, with the Popen methods used here.

    torch and diffusers are already imported, so it starts in a fraction of a second instead of
    several; a SIGKILL ends it exactly as it ends a fresh `python -m diffaudit` process.
    """

    def __init__(self, args):
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: run the command, never return into pytest
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                cli.main([str(a) for a in args])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            finally:
                os._exit(code)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def wait(self):
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path_factory, tmp_path):
    ws = workspace(tmp_path_factory)
    reference = reference_results(tmp_path_factory)  # first: it also warms the imports the forks share
    out = tmp_path / "killed"
    args = audit_args(ws, out)
    rng = np.random.default_rng(6)
    n_chunks, kills = 2 * N_MEMBERS // TINY_CONFIG["chunk_size"], []
    for attempt in range(5):
        # Kill once at least `target` chunks exist, then a random fraction of a chunk's time later
        # (mid-computation, mid-write or, for the last, while the report is being written).
        have = _count_chunks(out) if out.exists() else 0
        target = min(n_chunks, have + 1 + int(rng.integers(0, 2)))
        delay = float(rng.uniform(0, 0.4))
        if attempt == 0:  # a real `python -m diffaudit audit` process; then cheaper forks of this one
            proc = subprocess.Popen([sys.executable, "-m", "diffaudit", *map(str, args)], env=subprocess_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            proc = _Forked(args)
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and (not out.exists() or _count_chunks(out) < target):
                assert time.monotonic() < deadline, "the audit made no progress"
                time.sleep(0.01)
            assert proc.poll() is None, f"audit exited early with code {proc.returncode}"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        kills.append((target, _count_chunks(out)))
    assert len(kills) == 5 and kills[-1][1] > kills[0][1]  # each kill came after progress

    code, _, _ = run_cli(args)  # resume to completion
    assert code == 0
    assert comparable(out / "results.json") == reference
    assert_each_sample_once(out, ws)


# ---------------------------------------------------------------------------------------------
# Out of memory: the working batch is halved and the chunk retried, with a warning.

def _tiny_model():
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import tiny_autoencoder_kl, tiny_scheduler, tiny_unet2d

    vae = tiny_autoencoder_kl(in_channels=1, latent_channels=2, block_out_channels=(8, 8), sample_size=8,
                              attention=False)
    unet = tiny_unet2d(in_channels=2, sample_size=4, block_out_channels=(8, 16))
    return LatentDiffusion(unet=unet, scheduler=tiny_scheduler(), vae=vae)


def _samples():
    from diffaudit.audit import SampleSet

    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return SampleSet.from_tensors(x[:6], x[6:])


class _MemoryLimit:
    """Wraps eps/decode: a call on more rows than `limit` raises torch.OutOfMemoryError, like CUDA."""

    def __init__(self, fn, limit):
        self.fn, self.limit, self.sizes, self.refused = fn, limit, [], 0

    def __call__(self, x, *a, **kw):
        if x.shape[0] > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} rows")
        self.sizes.append(x.shape[0])
        return self.fn(x, *a, **kw)


def _stored_arrays(out: Path, n_chunks: int) -> dict:
    from diffaudit.audit.store import ChunkStore

    arrays = {}
    for kind in ("geometry", "attacks"):
        root = out / "cache" / kind
        manifest = json.loads((root / "manifest.json").read_text())
        st = ChunkStore(root, manifest)
        for i in range(n_chunks):
            for k, v in st.load(i).items():
                arrays.setdefault(f"{kind}/{k}", []).append(v)
    return {k: np.concatenate(v) for k, v in arrays.items()}


def test_out_of_memory_halves_the_batch_and_retries(tmp_path):
    from diffaudit.audit import run_audit
    from diffaudit.audit.plan import from_dict

    cfg = from_dict({**TINY_CONFIG, "chunk_size": 6, "batch_size": 6})
    samples = _samples()
    model = _tiny_model()
    clean = run_audit(model, samples, cfg, out_dir=tmp_path / "clean", progress=False, write_report=False)

    # UNet calls hold up to 8 x batch rows, here at most 18 (6 samples x 3 requests); a limit of 12
    # takes two halvings (6 -> 3 -> 1). The geometry decodes up to 4 x batch rows at once: 24 at
    # batch 6 are refused, 12 at batch 3 pass. Later chunks keep the smaller batch: no more warnings.
    a = _stored_arrays(tmp_path / "clean", 2)
    for part, limit, halvings in (("eps", 12, [(6, 3), (3, 1)]), ("decode", 12, [(6, 3)])):
        model = _tiny_model()
        wrapped = _MemoryLimit(getattr(model, part), limit)
        setattr(model, part, wrapped)
        out = tmp_path / f"tight-{part}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tight = run_audit(model, samples, cfg, out_dir=out, progress=False, write_report=False)
        said = [str(w.message) for w in caught if "out of memory" in str(w.message)]
        assert said == [f"out of memory at batch {b}; retrying with {h}" for b, h in halvings], part
        assert wrapped.refused == len(halvings) and max(wrapped.sizes) <= limit
        b = _stored_arrays(out, 2)
        assert a.keys() == b.keys()
        for k in a:  # equal up to float rounding of differently batched convolutions
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-4 * np.abs(a[k]).max(), err_msg=k)
        if part == "eps":  # chunk 0's geometry, done before its attacks ran out of memory, was kept
            assert all(np.array_equal(a[k][:6], b[k][:6]) for k in a if k.startswith("geometry/"))
        assert tight.results["protocols"] == clean.results["protocols"]

    # Out of memory even at batch 1: a clear error, not a loop.
    model = _tiny_model()
    model.eps = _MemoryLimit(model.eps, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DiffauditError, match="out of memory even at batch 1"):
            run_audit(model, samples, cfg, out_dir=tmp_path / "none", progress=False, write_report=False)


def test_only_allocator_failures_count_as_out_of_memory():
    from diffaudit.audit.run import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
