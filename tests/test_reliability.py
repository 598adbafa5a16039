"""Surviving SIGKILL (resume gives the uninterrupted run's results) and out-of-memory (halve, retry).

The audit CLI runs in a child process (first a fresh `python -m diffaudit`, then forks of the test
process, which start faster) on a tiny model folder and a split made by `diffaudit split`; it is
killed with SIGKILL at seeded random points, then rerun to completion. The workspace and the
1-process reference run (computed once per session) come from tests/conftest.py.
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

from conftest import (N_MEMBERS, TINY_CONFIG, assert_each_sample_once, audit_args, comparable, reference_results,
                      run_cli, subprocess_env, workspace)


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


def _assert_same_protocols(got, want, path="protocols"):
    """Equal, except fitted thresholds: those are score values, equal up to float rounding of the
    differently batched convolutions (every metric and CI, being rank-based, is exactly equal)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for k in want:
            if k == "threshold" and isinstance(want[k], float):
                assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), f"{path}/{k}"
            else:
                _assert_same_protocols(got[k], want[k], f"{path}/{k}")
    elif isinstance(want, list) and want and isinstance(want[0], (dict, list)):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_protocols(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


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
        _assert_same_protocols(tight.results["protocols"], clean.results["protocols"])

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
