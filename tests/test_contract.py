"""The supervisor-worker contract: each piece written the way the supervisor writes it and read the way
the worker reads it (``service/contract.py``)."""

import subprocess
import sys
from pathlib import Path

from service import contract
from service.contract import BootReport, MergeTotals, read_fence, write_fence
from service.http.metrics import Metrics
from service.http.write_gate import WriteGate
from service.settings import Config


def test_the_handed_over_names_are_what_the_settings_read(tmp_path: Path) -> None:
    environ = {
        contract.LITESTREAM_PID: "4242",
        contract.WRITER_FENCE_FILE: str(tmp_path / "fence"),
        contract.WRITER_LEASE_DEADLINE_FILE: str(tmp_path / "deadline"),
        contract.SET_ASIDE_MERGED_FILE: str(tmp_path / "merged"),
        contract.BOOT_REPORT: BootReport("diverged", "/data/x", 3, 2).to_json(),
    }
    config = Config.from_env(environ)
    assert config.litestream_pid == 4242
    assert config.fence_file == tmp_path / "fence"
    assert config.lease_deadline_file == tmp_path / "deadline"
    assert config.set_aside_merged_file == tmp_path / "merged"
    assert BootReport.from_json(config.boot_report) == BootReport("diverged", "/data/x", 3, 2)
    assert set(contract.HANDED_OVER) == set(environ)


def test_the_boot_report_reaches_the_metrics() -> None:
    metrics = Metrics()
    metrics.record_boot(BootReport("behind", "/data/hello.db.set-aside-x", 10, 4, "g2").to_json())
    text = metrics.exposition().body
    assert isinstance(text, bytes)
    assert b'hello_boot_outcome{outcome="behind"} 1.0' in text
    assert b'hello_boot_rows{kind="set_aside"} 10.0' in text
    assert b'hello_boot_rows{kind="reapplied"} 4.0' in text
    assert b'hello_replica_generation_info{generation="g2"} 1.0' in text


def test_merge_totals_round_trip(tmp_path: Path) -> None:
    MergeTotals(2, 30, 12).write(tmp_path / "merged")
    assert MergeTotals.read(tmp_path / "merged") == MergeTotals(2, 30, 12)
    assert MergeTotals.read(tmp_path / "missing") == MergeTotals()


def test_the_fence_is_written_before_litestream_dies_and_read_when_it_has(tmp_path: Path) -> None:
    """The order of the fence protocol: the reason is in the file before the watched process exits,
    so the worker, woken by the exit, always finds it."""
    fence = tmp_path / "fence"
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gate = WriteGate(stand_in.pid, fence)
    gate.open()
    try:
        assert read_fence(fence) == "" and read_fence(None) == ""
        write_fence(fence, "the lease on s3://b/p is now held by machine other")
        stand_in.kill()
        stand_in.wait()
        assert "machine other" in (gate.refusal() or "")
        assert gate.fenced
    finally:
        gate.close()
        stand_in.kill()
