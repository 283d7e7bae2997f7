"""A multi-process run closes its process group without deadlocking (see
``lora_studio.training.trainer.leaving_process_group``).

Two CPU processes (gloo) repeat what a distributed run does at its end: a DDP step, the
save's barrier, then the teardown. With the group destroyed straight after the barrier
this hung within about 20 rounds (gloo's worker thread waiting for the GIL while holding
the group's lock, the destructor holding the GIL and waiting for the lock).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROUNDS = 60

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from lora_studio.training.trainer import leaving_process_group

    def worker(rank, folder, rounds):
        torch.set_num_threads(1)
        for i in range(rounds):
            dist.init_process_group(
                "gloo", init_method=f"file://{folder}/store-{i}", rank=rank, world_size=2
            )
            model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8))
            model(torch.randn(4, 8)).sum().backward()
            dist.barrier()  # the save's wait_for_everyone
            with leaving_process_group():
                model = None
            assert not dist.is_initialized()

    if __name__ == "__main__":
        mp.spawn(worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
        print("all rounds closed")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_two_processes_close_their_group_round_after_round(tmp_path: Path) -> None:
    script = tmp_path / "teardown.py"
    script.write_text(SCRIPT, encoding="utf-8")
    # In a session of its own: a deadlocked run's two workers are killed with it.
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(ROUNDS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError("closing the process group deadlocked") from None
    assert process.returncode == 0, err
    assert "all rounds closed" in out
