"""``make run-postgres``: the PostgreSQL profile on this machine, on a throwaway PostgreSQL server.

Starts a PostgreSQL cluster in a temporary folder on a free loopback port (``scripts/pg_cluster.py``,
the helper the tests use; Debian's ``postgresql`` package, which ``scripts/install-test-tools.sh``
installs), creates a database, points ``DATABASE_URL`` at it, migrates, and serves the production
server (gunicorn with ``gunicorn.conf.py``) on ``PORT`` (8080). Ctrl-C (or SIGTERM) stops gunicorn,
then the server, and removes its folder: nothing is kept.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.pg_cluster import PostgresServer, server_binaries  # noqa: E402


def main() -> int:
    bin_dir = server_binaries()
    if bin_dir is None:
        sys.stderr.write(
            "run-postgres: PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "run scripts/install-test-tools.sh, or apt-get install postgresql\n"
        )
        return 1
    server = PostgresServer(bin_dir)
    try:
        server.init()
        server.start()
        env = {**os.environ, "DATABASE_URL": server.url(server.create_database())}
        migrate = subprocess.run([sys.executable, "-m", "service", "migrate"], env=env, check=False)
        if migrate.returncode != 0:
            return migrate.returncode
        gunicorn = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "-c", str(ROOT / "gunicorn.conf.py")],
            env=env,
            cwd=ROOT,
        )
        # Ctrl-C reaches gunicorn too (same process group): wait for it to drain and exit.
        signal.signal(signal.SIGINT, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, lambda signum, frame: gunicorn.send_signal(signal.SIGTERM))
        return gunicorn.wait()
    finally:
        server.remove()


if __name__ == "__main__":
    sys.exit(main())
