"""Issue 10, item 1: a run holds an exclusive lock on its output_dir for its whole lifetime; a second run into the
same folder exits non-zero at once, naming the folder and the holder, and changes nothing; the lock of a run killed
with SIGKILL does not block `--resume`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import yaml

from hftransfer.cli import main

# Holds the lock the way a running `hftransfer train` does (flock on output_dir/.hftransfer.lock + holder record),
# without importing hftransfer, so this test describes the contract rather than the implementation.
HOLDER = textwrap.dedent(
    """
    import fcntl, json, os, socket, sys, time
    fd = os.open(os.path.join(sys.argv[1], ".hftransfer.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2025-01-01T10:00:00+00:00"}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(record) + "\\n").encode())
    print("locked", flush=True)
    time.sleep(600)
    """
)


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_a_second_run_is_refused_at_once_and_a_killed_holder_does_not_block_resume(
    tmp_path, make_recipe, feature_cache_dir, capsys, monkeypatch
):
    output_dir = tmp_path / "out"
    recipe = make_recipe(
        output_dir,
        feature_cache_dir,
        data={"max_train_samples": 32, "max_eval_samples": 32},
        stages=[{"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"}],
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    output_dir.mkdir()
    (output_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))  # what the running holder wrote

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(output_dir)
        started = time.monotonic()
        for extra in ([], ["--resume"]):
            code = main(["train", str(path), *extra])
            err = capsys.readouterr().err
            assert code == 1, err[-2000:]
            message = next(line for line in err.splitlines() if line.startswith("error: "))
            assert str(output_dir) in message
            assert f"pid {holder.pid} on {socket.gethostname()}, started 2025-01-01T10:00:00+00:00" in message
        assert time.monotonic() - started < 20, "refused at once, before loading data or building a model"
        assert _snapshot(output_dir) == before, "the refused runs changed nothing, the lock file included"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    # The holder died without unlocking (SIGKILL): its lock file remains, its lock does not. --resume runs, and
    # holds the lock itself while it trains.
    from hftransfer.errors import RunLockedError
    from hftransfer.training import staged
    from hftransfer.training.run_lock import RunLock

    seen = []
    original = staged.StagedFineTuner._run_stage

    def run_stage(self, index, stage):
        try:
            RunLock(output_dir).acquire()
        except RunLockedError as err:
            seen.append(str(err))
        return original(self, index, stage)

    monkeypatch.setattr(staged.StagedFineTuner, "_run_stage", run_stage)
    code = main(["train", str(path), "--resume"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert len(seen) == 1 and f"pid {os.getpid()}" in seen[0], seen
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "metrics.json").is_file()
    record = json.loads((output_dir / ".hftransfer.lock").read_text())
    assert record["pid"] == os.getpid()
    with RunLock(output_dir):  # released when the run ended
        pass
