"""The launcher and the process-aware pieces, cheaply: a dead process is named and the others stopped (two real
processes on loopback); the rest in this process (environment parsing, process-0-only writers, the
layout-independent checkpoint fingerprint against a numpy re-derivation, data shards that partition a batch)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import launch, parallel
from jaxllm.config import ConfigError
from jaxllm.data.batching import minibatches
from jaxllm.train import metrics, run
from jaxllm.train.checkpoint import fingerprint
from tests.multihost import util


def test_dead_process_is_named_and_the_others_are_stopped():
    """Process 1 exits with 3 while process 0 waits in a barrier: the launcher must name process 1 (the first
    to fail, whatever process 0 does next: gloo may fail it, or it waits) and its code, leave no process
    running, and return 3 well before its own timeout."""
    t0 = time.monotonic()
    res = util.launch("tests.multihost.crash_child", "3")
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert "launch: process 1 of 2 failed: exit code 3" in res.stdout
    assert "[p0] process 0 of 2 up" in res.stdout and "[p1] process 1 of 2 up" in res.stdout  # prefixed lines
    assert time.monotonic() - t0 < util.LIMIT_S - 30


def test_the_first_to_fail_is_named_even_when_a_peer_is_reaped_first():
    """Process 1 fails (code 3) and is slow to exit; process 0 fails because of it (code 1) and exits at once,
    so the launcher reaps process 0 first. The cause named must be process 1, from the failure time each worker
    records before exiting, not the order the launcher reaps them in."""
    res = util.launch("tests.multihost.crash_child", "3", "late")
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert "launch: process 1 of 2 failed: exit code 3" in res.stdout, res.stdout[-3000:]


def test_failures_are_ordered_by_their_records_then_by_reaping():
    """first_failure: a recorded failure counts before its process is reaped and is timed by its record; a
    failure without a record (a signal) by when it was reaped; clean exits never count."""
    assert launch.first_failure([(0, 0, 1.0)], {}) is None
    assert launch.first_failure([(0, 1, 5.0)], {1: (4.0, 3)}) == (1, 3)  # 1 not reaped yet, failed first
    assert launch.first_failure([(0, 1, 5.0), (1, 3, 5.1)], {0: (4.9, 1), 1: (4.0, 3)}) == (1, 3)
    assert launch.first_failure([(0, 1, 5.0), (1, 3, 5.1)], {0: (4.9, 1)}) == (0, 1)  # 1's record: none
    assert launch.first_failure([(1, -9, 2.0), (0, 1, 2.5)], {0: (2.4, 1)}) == (1, -9)  # SIGKILLed first
    assert launch.first_failure([(0, 0, 1.0), (1, 0, 1.0)], {}) is None


def test_a_worker_records_its_failure_for_the_launcher(tmp_path):
    launch.record_failure(7, env={launch.FAILURE_DIR_ENV: str(tmp_path), "JAXLLM_PROCESS_ID": "2"})
    launch.record_failure(7, env={"JAXLLM_PROCESS_ID": "3"})  # not under a launcher: nothing written
    (tmp_path / "p5.tmp").write_text("half")  # a record being written is not read
    recorded = launch.read_failures(str(tmp_path))
    assert list(recorded) == [2] and recorded[2][1] == 7 and abs(recorded[2][0] - time.monotonic()) < 60


def test_run_dir_is_chosen_once_for_all_processes():
    args = launch.with_run_dir("experiments", ["li2_grokking", "steps=3"])
    assert args[:2] == ["li2_grokking", "steps=3"] and args[2].startswith("run_dir=runs/li2_grokking/")
    assert launch.with_run_dir("experiments", ["li2_grokking", "run_dir=x"]) == ["li2_grokking", "run_dir=x"]


def test_distributed_config_from_env():
    env = {"JAXLLM_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAXLLM_NUM_PROCESSES": "2", "JAXLLM_PROCESS_ID": "1"}
    assert parallel.distributed_config_from_env(env) == parallel.DistributedConfig("127.0.0.1:1234", 2, 1)
    assert parallel.distributed_config_from_env({}) is None
    with pytest.raises(ConfigError, match="process_id=2 must be in"):
        parallel.distributed_config_from_env({**env, "JAXLLM_PROCESS_ID": "2"})
    with pytest.raises(ConfigError, match="host:port"):
        parallel.DistributedConfig("localhost")
    assert parallel.cluster_detected({"SLURM_NTASKS": "8"}) and not parallel.cluster_detected({"SLURM_NTASKS": "1"})
    assert not parallel.initialize(env={})  # nothing asks for several processes: nothing starts


def test_only_process_zero_writes(tmp_path, monkeypatch):
    """A process other than 0 writes no metrics row, TensorBoard event, summary, config or plot."""
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    w = metrics.MetricsWriter(tmp_path, enabled=parallel.is_main_process())
    w.write(1, {"loss": 1.0})
    w.close()
    run.write_summary(tmp_path, {"x": 1})
    run.prepare_run_dir(str(tmp_path), parallel.MeshConfig())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run.save_figure(plt.figure(), tmp_path, "f")
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def _numpy_word_sum(x: np.ndarray) -> int:
    """The fingerprint's definition re-derived with numpy: sum_i w_i (2i + 1) mod 2^32 over 32-bit words."""
    words = x.reshape(-1).view(np.uint32).astype(np.uint64) if x.dtype.itemsize >= 4 else \
        x.reshape(-1).view(f"uint{8 * x.dtype.itemsize}").astype(np.uint64)
    i = np.arange(words.size, dtype=np.uint64)
    return int(np.sum((words * (2 * i + 1)) % 2**32) % 2**32)


def test_fingerprint_matches_numpy_and_sees_one_flipped_bit():
    rs = np.random.RandomState(0)
    tree = {"f32": rs.randn(3, 5).astype(np.float32), "bf16": rs.randn(7).astype(jnp.bfloat16),
            "i32": np.arange(6, dtype=np.int32).reshape(2, 3)}
    got = fingerprint(jax.tree.map(jnp.asarray, tree))
    assert got == [_numpy_word_sum(np.asarray(tree[k])) for k in sorted(tree)]
    flipped = tree["f32"].copy()
    flipped.view(np.uint32)[1, 2] ^= 1 << 31
    assert fingerprint({"f32": jnp.asarray(flipped)}) != fingerprint({"f32": jnp.asarray(tree["f32"])})


def test_process_shards_partition_each_batch():
    """Two shards of minibatches read disjoint rows whose concatenation is the unsharded batch."""
    data = {"row": np.arange(40)}
    whole, first, second = (iter(minibatches(data, 8, seed=3, shard=s)) for s in ((0, 1), (0, 2), (1, 2)))
    for _ in range(7):  # crosses an epoch boundary
        a, b = next(first)["row"], next(second)["row"]
        assert not set(a.tolist()) & set(b.tolist())
        np.testing.assert_array_equal(np.concatenate([a, b]), next(whole)["row"])
    with pytest.raises(ConfigError, match="shard"):
        minibatches(data, 8, seed=0, shard=(0, 3))


def test_launch_rejects_zero_processes(capsys):
    assert launch.main(["-n", "0", "x"]) == 2
    assert "-n must be >= 1" in capsys.readouterr().err


def test_batch_source_state_restores_per_process_and_across_process_counts(monkeypatch, tmp_path):
    """A checkpoint's data item holds each process's batch-source state. Restored with the same process count,
    process i gets state i; with another count (2 processes -> 1, the RL run's resharding restore) it restores
    when every process had the same state (an RL source's counters, a pipeline every process reads whole), and
    it is a clear error when the processes each read their own shard (their positions differ)."""
    from jaxllm.train.checkpoint import _this_process

    same = {"processes": [{"batches": 2, "reward_errors": 0}] * 2}
    own = {"processes": [{"pos": 8}, {"pos": 5}]}
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert _this_process(own, tmp_path) == {"pos": 5}
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    assert _this_process(same, tmp_path) == {"batches": 2, "reward_errors": 0}
    with pytest.raises(ConfigError, match="resume it with 2 processes, not 1"):
        _this_process(own, tmp_path)
    assert _this_process({"pos": 3}, tmp_path) == {"pos": 3}  # a checkpoint from before per-process states


@pytest.mark.slow
def test_sigterm_stops_processes_that_ignore_it():
    """SIGTERM to the launcher is forwarded; processes that ignore it (as jax's preemption handler makes a worker
    do) are killed STOP_GRACE_S later: the launcher returns 128 + SIGTERM, says so, and leaves no process."""
    import os
    import re
    import signal
    import subprocess
    import sys

    env = util._env(2)
    proc = subprocess.Popen([sys.executable, "-m", "jaxllm.launch", "-n", "2", "--timeout", "300", "--module",
                             "tests.multihost.stubborn_child"], cwd=util.ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, pids = [], []
    try:
        while len(pids) < 2:
            line = proc.stdout.readline()
            assert line, "".join(lines)[-3000:]
            lines.append(line)
            pids += [int(p) for p in re.findall(r"pid (\d+) up", line)]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert f"processes still running after {launch.STOP_GRACE_S:g} s: stopping all 2" in out
    assert time.monotonic() - t0 < 4 * launch.STOP_GRACE_S + 30
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _start_stubborn_pair():
    """The launcher over two SIGTERM-ignoring processes, and their pids once both are up."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "jaxllm.launch", "-n", "2", "--timeout", "300", "--module",
                             "tests.multihost.stubborn_child"], cwd=util.ROOT, env=util._env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, pids = [], []
    while len(pids) < 2:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise AssertionError("".join(lines)[-3000:])
        lines.append(line)
        pids += [int(p) for p in re.findall(r"pid (\d+) up", line)]
    return proc, pids


def _gone_within(pids, seconds: float) -> bool:
    import os

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_processes_die_with_a_killed_launcher():
    """SIGKILL of the launcher (which then cannot stop anything) still ends its processes at once, through
    PR_SET_PDEATHSIG: no orphan is left waiting in a collective."""
    import signal

    proc, pids = _start_stubborn_pair()
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _gone_within(pids, 10.0), f"processes {pids} outlived the killed launcher"
    finally:
        proc.kill()


@pytest.mark.slow
def test_a_closed_output_does_not_orphan_processes():
    """The launcher's reader goes away (a piping parent died) and then SIGTERM comes: its writes fail, and it
    must still stop both processes and return 128 + SIGTERM (it used to die of BrokenPipeError, leaving them)."""
    import signal

    proc, pids = _start_stubborn_pair()
    try:
        proc.stdout.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        assert _gone_within(pids, 10.0), f"processes {pids} outlived the launcher"
    finally:
        proc.kill()


def test_output_that_breaks_is_dropped_not_raised():
    """The launcher's stream wrapper swallows a broken pipe / closed file, and drops what comes after."""
    import io

    stream = io.StringIO()
    out = launch._Output(stream)
    out.write("kept\n")
    stream.close()
    out.write("lost\n")  # would raise ValueError on the closed stream
    out.flush()
    assert out.lost
