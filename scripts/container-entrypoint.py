"""The container's entrypoint: hand the data volume to the service user, drop root, exec the command.

Fly.io mounts a volume owned by root, and a fresh Docker volume is root's too, while the service runs
as an unprivileged user. Started as root, this makes DATA_DIR (default /data, the volume's mount point)
and anything already in it belong to APP_USER, drops to that user for good, and replaces itself with
the command (``scripts/start.sh`` by default): no process stays behind as root, and the signals the
platform sends reach the command directly. Started as any other user, it only execs the command.
"""

import os
import pwd
import sys
from pathlib import Path

from service.settings import ContainerSettings


def _give_to(folder: Path, uid: int, gid: int) -> None:
    """chown the folder and everything under it that is not already the user's; no symlink is followed."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder]
    for root, dirs, files in os.walk(folder):
        paths.extend(Path(root, name) for name in [*dirs, *files])
    for path in paths:
        info = path.lstat()
        if (info.st_uid, info.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: container-entrypoint.py COMMAND [ARG...]")
    if os.getuid() == 0:
        settings = ContainerSettings.from_env(os.environ)
        user = pwd.getpwnam(settings.app_user)
        _give_to(settings.data_dir, user.pw_uid, user.pw_gid)
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        os.environ["HOME"] = user.pw_dir
        os.environ["USER"] = user.pw_name
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
