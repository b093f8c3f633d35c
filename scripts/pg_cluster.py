"""A throwaway PostgreSQL server on loopback: ``initdb`` in a temporary folder, started on a free
127.0.0.1 port with its socket in that folder, stopped (and the folder removed) at the end.

Used by the tests (``tests/pg_server.py`` adds their skip-or-fail rule) and by the benchmark
(``scripts/bench.py``). The server refuses to run as root, so as root every server command runs as
``nobody``; as any other user it runs as that user.
"""

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

_RUN_AS = "nobody"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_binaries() -> Path | None:
    """The newest installed server's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    return Path(newest).parent


class PostgresServer:
    """One cluster: ``start``, ``stop`` (as an operator would, ``pg_ctl stop -m fast``), ``url``, ``sql``."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="hello-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            account = pwd.getpwnam(_RUN_AS)
            os.chown(self.folder, account.pw_uid, account.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        account = pwd.getpwnam(_RUN_AS) if self._as_root else None
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.folder), "LC_ALL": "C"}
        result = subprocess.run(
            args,
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr}{result.stdout}\n{log[-2000:]}")
        return result

    def init(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip

    def start(self, cpus: str | None = None) -> None:
        """Start the server; with ``cpus`` (a taskset list), it and every backend it forks run there."""
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        pinned = ("taskset", "-c", cpus) if cpus is not None else ()
        self._run(
            *pinned, str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
            "-w", "-t", "60", "-o", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def sql(self, statement: str, database: str = "postgres") -> list[list[str]]:
        """Run one statement with psql (a client of its own); the rows, each a list of text fields."""
        result = self._run(
            str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-c", statement,
        )  # fmt: skip
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.sql(f"CREATE DATABASE {name}")
        return name

    def remove(self) -> None:
        if self.running():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
