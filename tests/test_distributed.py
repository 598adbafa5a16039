"""Two CPU processes through `accelerate launch` (gloo) give the single-process results.

Each rank computes the chunks i ≡ rank (mod 2) into the shared store; rank 0 gathers after a
barrier and writes the report. Every random draw is keyed by sample, so sharding changes nothing.
"""
import json
import socket
import subprocess
import sys

import pytest

from diffaudit.distributed import launched_distributed, process_group
from conftest import (assert_each_sample_once, audit_args, comparable, reference_results, run_cli,
                      subprocess_env, workspace)


def _free_port() -> int:
    with socket.socket() as s:  # other test runs on this machine may hold accelerate's default port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_equal_one(tmp_path_factory, tmp_path):
    pytest.importorskip("accelerate")
    ws = workspace(tmp_path_factory)
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "diffaudit", *map(str, audit_args(ws, out))]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only the main process reports: one summary means the two processes saw ranks 0 and 1.
    assert [ln.startswith("report: ") for ln in proc.stdout.splitlines()].count(True) == 1, proc.stdout[-2000:]
    assert comparable(out / "results.json") == reference_results(tmp_path_factory)
    assert_each_sample_once(out, ws)

    # Resuming works the same: a single process reuses the chunks the two wrote (nothing to compute).
    code, _, _ = run_cli(audit_args(ws, out))
    assert code == 0
    timing = json.loads((out / "results.json").read_text())["timing"]
    assert timing["geometry_s"] == 0 and timing["attacks_s"] == 0
    assert comparable(out / "results.json") == reference_results(tmp_path_factory)


def test_single_process_without_a_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_distributed()
    with process_group("cpu") as pg:
        assert (pg.rank, pg.world_size, pg.is_main, pg.barrier) == (0, 1, True, None)
        assert str(pg.device) == "cpu"


def _rank_without_accelerate(tag):
    """As a worker on a machine without the accelerate extra: plain gloo."""
    import importlib.util
    import os

    real = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name == "accelerate" else real(name, *a)
    with process_group("cpu") as pg:
        import accelerate.state

        pg.barrier()
        return (tag, pg.rank, pg.world_size, os.environ["OMP_NUM_THREADS"],
                accelerate.state.PartialState._shared_state == {})


def _fails_on_rank_1():
    from diffaudit.errors import ConfigError

    with process_group("cpu") as pg:
        if pg.rank == 1:
            raise ConfigError("settings.toml: rank 1 refuses")
        pg.barrier()


def test_local_processes_return_rank_0_and_raise_a_workers_error_as_itself(capfd):
    """`run_local_processes` (torchrun's launcher, as `diffaudit demo --processes` uses it): rank 0's
    value comes back; a worker's DiffauditError is raised in the caller as its own class, and the
    launcher prints nothing of it."""
    from diffaudit.distributed import run_local_processes
    from diffaudit.errors import ConfigError

    import os

    import torch

    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    assert run_local_processes(_rank_without_accelerate, ("x",), 2) == ("x", 0, 2, threads, True)
    assert "OMP_NUM_THREADS" not in os.environ or os.environ["OMP_NUM_THREADS"] == threads  # restored
    capfd.readouterr()
    with pytest.raises(ConfigError, match="settings.toml: rank 1 refuses"):
        run_local_processes(_fails_on_rank_1, (), 2)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "rank 1 refuses" not in out + err


@pytest.mark.slow
def test_audit_processes_equal_one_process(tmp_path_factory, tmp_path, capsys):
    """`diffaudit audit --processes 2` (torchrun's launcher, one thread per worker) gives the
    single-process results, each sample computed once, and one report."""
    ws = workspace(tmp_path_factory)
    out = tmp_path / "two"
    code, stdout, err = run_cli([*audit_args(ws, out), "--processes", "2"], capsys)
    assert code == 0, err
    assert [ln.startswith("report: ") for ln in stdout.splitlines()].count(True) == 1, stdout[-2000:]
    assert json.loads((out / "results.json").read_text())["timing"]["processes"] == 2
    assert comparable(out / "results.json") == reference_results(tmp_path_factory)
    assert_each_sample_once(out, ws)


@pytest.mark.parametrize("extra, env, message", [
    (["--device", "cuda"], {}, "--processes starts CPU processes"),
    ([], {"WORLD_SIZE": "2"}, "--processes inside a launched run"),
])
def test_audit_processes_refused_where_a_launcher_is_the_way(tmp_path_factory, tmp_path, capsys, monkeypatch,
                                                             extra, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ws = workspace(tmp_path_factory)
    code, out, err = run_cli([*audit_args(ws, tmp_path / "r"), "--processes", "2", *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1, err
