"""The replica as the boot checks and the writer lease see it: its LTX files and one small object.

Litestream 0.5 keeps a replica as LTX files named ``<minTXID>-<maxTXID>.ltx`` (16 hex digits each),
one folder per compaction level: ``<path>/ltx/<level>/`` in a ``file://`` replica, ``<path>/<level as
4 hex digits>/`` in S3 (``s3/replica_client.go``). Level 0 holds the files exactly as the writing
machine cut them, so a level-0 file in the replica and the same-named file in the local state
folder (``.<db>-litestream/ltx/0``) are byte for byte the same file when they come from the same
history. Their trailer ends with a CRC-64 of the whole file: that is the fingerprint compared here
(Litestream 0.5 writes LTX files without the rolling database checksums, so those are zero and say
nothing).

Two kinds of replica, as ``REPLICA_URL`` names them: ``s3://bucket/path?endpoint=...&region=...``
(S3, Tigris, any S3-compatible store; conditional writes make the lease) and ``file:///abs/path``
(a folder; a file lock makes the lease).
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit

from service.settings import S3Credentials

LTX_NAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx")
_S3_LEVEL0 = "0000"
_S3_LTX_KEY = re.compile(r"[0-9a-f]{4}/[0-9a-f]{16}-[0-9a-f]{16}\.ltx")
# The trailer's last 8 bytes: CRC-64 of the file (github.com/superfly/ltx, TrailerSize = 16).
FILE_CHECKSUM_BYTES = 8


class ReplicaUnavailable(RuntimeError):
    """The replica could not be read or written: unreachable, refused, or misconfigured.

    ``transient`` says whether trying again may help: no answer, or a server error (5xx). A refusal
    (wrong credentials, no such bucket) is not transient. ``status`` and ``code`` are the store's
    answer (HTTP status, S3 error code) when there was one.
    """

    def __init__(self, message: str, transient: bool, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True, order=True)
class LtxFile:
    """One LTX file by its transaction range; ``name`` is its file name."""

    max_txid: int
    min_txid: int
    name: str
    size: int

    @classmethod
    def parse(cls, name: str, size: int) -> "LtxFile | None":
        match = LTX_NAME.fullmatch(name)
        if match is None:
            return None
        return cls(max_txid=int(match.group(2), 16), min_txid=int(match.group(1), 16), name=name, size=size)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A small object of the replica's (the lease), as read: body, version tag, and the store's clock."""

    body: bytes
    etag: str
    age_seconds: float


class Replica(Protocol):
    """What the boot checks need of a replica."""

    @property
    def url(self) -> str: ...

    def level0(self) -> list[LtxFile]:
        """Every level-0 LTX file, oldest first; empty when nothing was ever replicated."""
        ...

    def has_any_ltx(self) -> bool:
        """Whether the replica holds any LTX file at all, at any level."""
        ...

    def file_checksum(self, ltx: LtxFile) -> bytes:
        """The last 8 bytes of a level-0 file: its CRC-64."""
        ...


def local_level0(state_dir: Path) -> list[LtxFile]:
    """The level-0 files of a local Litestream state folder (``.<db>-litestream``), oldest first."""
    folder = state_dir / "ltx" / "0"
    if not folder.is_dir():
        return []
    found = (LtxFile.parse(path.name, path.stat().st_size) for path in folder.iterdir())
    return sorted(ltx for ltx in found if ltx is not None)


def local_file_checksum(state_dir: Path, ltx: LtxFile) -> bytes:
    with (state_dir / "ltx" / "0" / ltx.name).open("rb") as file:
        file.seek(-FILE_CHECKSUM_BYTES, 2)
        return file.read(FILE_CHECKSUM_BYTES)


# --- file:// -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileReplica:
    url: str
    root: Path

    def level0(self) -> list[LtxFile]:
        return local_level0(self.root)

    def has_any_ltx(self) -> bool:
        ltx = self.root / "ltx"
        return ltx.is_dir() and any(LTX_NAME.fullmatch(path.name) for path in ltx.glob("*/*"))

    def file_checksum(self, ltx: LtxFile) -> bytes:
        return local_file_checksum(self.root, ltx)


# --- s3:// ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint: str | None
    region: str | None


class S3Replica:
    """An S3-compatible replica, spoken to with boto3; every call is bounded by short timeouts.

    boto3 is imported here, on first use, so that the service's worker never loads it.
    """

    def __init__(self, url: str, location: S3Location, environ: Mapping[str, str]) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self.url = url
        self.location = location
        credentials = S3Credentials.from_env(environ)
        region = location.region or credentials.region
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=location.endpoint,
            region_name=region or "us-east-1",
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            config=BotoConfig(
                connect_timeout=3,
                read_timeout=5,
                # The callers retry until their own deadline; botocore's retries would hide how long
                # a call can take.
                retries={"max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": "path" if location.endpoint else "auto"},
            ),
        )
        if is_tigris(location.endpoint):
            # Tigris serves a global bucket eventually consistent across regions unless asked:
            # the lease's reads and conditional writes must see the latest write everywhere.
            self.client.meta.events.register("before-sign.s3", _ask_for_consistency)

    def key(self, name: str) -> str:
        """The object key of ``name`` in the replica's path (Litestream joins them with one slash)."""
        return f"{self.location.prefix}/{name}"

    def level0(self) -> list[LtxFile]:
        found: list[LtxFile] = []
        for item in self._list(self.key(f"{_S3_LEVEL0}/")):
            ltx = LtxFile.parse(item["Key"].rsplit("/", 1)[-1], int(item["Size"]))
            if ltx is not None:
                found.append(ltx)
        return sorted(found)

    def has_any_ltx(self) -> bool:
        prefix = self.key("")
        return any(_S3_LTX_KEY.fullmatch(item["Key"][len(prefix) :]) for item in self._list(prefix))

    def file_checksum(self, ltx: LtxFile) -> bytes:
        first = ltx.size - FILE_CHECKSUM_BYTES
        answer = self.call(
            "get_object",
            Bucket=self.location.bucket,
            Key=self.key(f"{_S3_LEVEL0}/{ltx.name}"),
            Range=f"bytes={first}-{ltx.size - 1}",
        )
        body: bytes = answer["Body"].read()
        return body[-FILE_CHECKSUM_BYTES:]

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: dict[str, str] = {}
        while True:
            page = self.call("list_objects_v2", Bucket=self.location.bucket, Prefix=prefix, **token)
            items.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                return items
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def call(self, operation: str, **kwargs: Any) -> Any:
        """One boto3 S3 call on this replica's client; any failure as ``ReplicaUnavailable``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str(error.get("Code") or status)
            raise ReplicaUnavailable(
                f"{operation}: {code}: {error.get('Message') or exc}", status >= 500, status, code
            ) from exc
        except BotoCoreError as exc:
            raise ReplicaUnavailable(f"{operation}: {exc}", transient=True) from exc


_TIGRIS_HOSTS = ("fly.storage.tigris.dev", "t3.storage.dev", "storage.tigris.dev")


def is_tigris(endpoint: str | None) -> bool:
    """Whether the endpoint is Tigris (Fly's object storage), by its documented host names."""
    host = (urlsplit(endpoint).hostname or "") if endpoint else ""
    return any(host == name or host.endswith("." + name) for name in _TIGRIS_HOSTS)


def _ask_for_consistency(request: Any, **_: Any) -> None:
    request.headers["X-Tigris-Consistent"] = "true"


def parse_s3_url(url: str) -> S3Location:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    endpoint = query["endpoint"][0] if query.get("endpoint") else None
    region = query["region"][0] if query.get("region") else None
    return S3Location(bucket=parts.netloc, prefix=parts.path.strip("/"), endpoint=endpoint, region=region)


def open_replica(url: str, environ: Mapping[str, str]) -> FileReplica | S3Replica:
    """The replica that ``REPLICA_URL`` names (validated by scripts/start.sh before this runs)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileReplica(url=url, root=Path(parts.path))
    if parts.scheme == "s3":
        return S3Replica(url, parse_s3_url(url), environ)
    raise ValueError(f"REPLICA_URL must be s3://bucket/path?... or file:///absolute/path, not {url!r}")


# --- Generations: one replica path per writer that took the lease over without a release ------------

GENERATIONS = "generations"


def generation_url(replica_url: str, generation: str) -> str:
    """The URL Litestream replicates to, or restores from, for ``generation`` of ``replica_url``.

    The root generation ("") is the path itself: a replica made before generations existed keeps
    working as it is. Any other lives at ``<path>/generations/<name>`` beside the lease object, with
    the URL's query (endpoint, region) unchanged.
    """
    if not generation:
        return replica_url
    parts = urlsplit(replica_url)
    path = f"{parts.path.rstrip('/')}/{GENERATIONS}/{generation}"
    return urlunsplit(parts._replace(path=path))


def generation_at(history: list[dict[str, str]], when: datetime | None) -> str:
    """The generation that was being written at ``when`` (None: the current one) from a lease's history.

    The history lists each generation with the time it began, oldest first; before the first entry
    (a replica older than the lease) the root generation was written.
    """
    if not history:
        return ""
    if when is None:
        return str(history[-1].get("generation", ""))
    current = ""
    for entry in history:
        try:
            since = datetime.fromisoformat(str(entry["since"]))
        except (KeyError, ValueError):
            continue
        if since <= when:
            current = str(entry.get("generation", ""))
    return current
