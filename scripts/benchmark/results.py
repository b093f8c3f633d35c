"""The figures of a run, as the report prints them and ``--json`` writes them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    scenario: str
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    peak_rss_mb: float
    ready_s: float
    cpu_us: float
    rounds: int
    ratio: float | None = None
    ratio_of: str = ""
    db_cpu_us: float = 0.0  # the PostgreSQL server's CPU per request (SQLite's is in the worker's)
    # The bare app's CPU per request over this row's, in the same scenario: the share by CPU time, which
    # a neighbour taking part of the server's core moves far less than req/s.
    cpu_ratio: float | None = None
    client_busy: float = 0.0  # the share of its core wrk used (the most of the rounds)


@dataclass
class SustainedRow:
    """One long load: the latency tail, the WAL's largest size and the worker's memory over it."""

    scenario: str
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    wal_max_mb: float
    rss_start_mb: float
    rss_end_mb: float


@dataclass
class Traffic:
    """What one window of load cost the replica: object-store requests per second by price class
    (counted by the store: every request under the configuration's prefix, the writer lease's too),
    Litestream's own count of its uploads, and the service's syncs (DURABILITY=replicated)."""

    seconds: float
    store_rps: dict[str, float]  # PUT, LIST, GET, DELETE (scripts/benchmark/pricing.py)
    litestream_puts_per_s: float  # litestream_replica_operation_total{operation="PUT"}
    syncs_per_s: float  # hello_replication_syncs_total
    puts_per_sync: float | None  # PUTs acknowledged (any outcome) per sync; None without syncs
    acks: dict[str, int]  # hello_replication_acks_total by outcome
    # Litestream's mean time to copy new WAL frames into a local LTX file (litestream_sync_seconds over
    # litestream_sync_count): the local part of a sync, before the upload; None without syncs.
    db_sync_ms: float | None = None


@dataclass
class DurabilityRow:
    """One configuration (DURABILITY, the round trip to the store) under wrk's PUTs, as fast as it answers."""

    mode: str  # local or replicated
    network: str  # loopback, or the delay the relay adds
    ok_rps: float  # 2xx answers per second
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int
    traffic: Traffic


@dataclass
class SteadyRow:
    """One configuration under PUTs sent at a fixed rate, and what its object-store requests cost."""

    mode: str
    network: str
    offered_rps: float
    ok_rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    not_ok: int  # answers outside 2xx, and requests with no answer
    traffic: Traffic
    requests_per_month: float  # every store request, at this rate for 30 days
    usd_per_month: dict[str, float]  # by price list


@dataclass
class OpenLoopRow:
    """One scenario at a share of its capacity, requests sent on a schedule (scripts/benchmark/paced.py)."""

    scenario: str
    server: str
    share: float  # of the capacity: 0.25, 0.5, 0.75
    capacity_rps: float  # the scenario's median wrk throughput in the same run
    offered_rps: float
    achieved_rps: float  # requests sent per second, first to last
    p50_ms: float  # latencies from each request's due time
    p99_ms: float
    p999_ms: float
    max_ms: float
    not_ok: int  # answers outside 2xx, and requests with no answer
    lag_p99_ms: float  # how late the client sent its requests
    lag_max_ms: float
    waited: int  # requests that found all the client's connections busy
    kept_schedule: bool  # the client kept its schedule: else the latencies are partly its own
    requests: int = 0  # counted (after the warm-up)
    client_cpu: float = 0.0  # the client's CPU time over its run's time: its headroom on the load core
    client_runqueue_ms: float = 0.0  # how long the client waited for the load core (other processes on it)
    client_realtime: bool = False  # the client ran under SCHED_FIFO
    # The server's CPU per request over the whole load, warm-up included: the worker's, and PostgreSQL's
    # processes' for the PostgreSQL profile (as CPU µs/req plus DB CPU µs/req in the main table).
    server_cpu_us: float = 0.0


@dataclass
class Results:
    machine: str
    command: str
    duration_s: float
    rounds: int
    rows: list[Row] = field(default_factory=list)
    restore_s: float | None = None
    restore_users: int = 0
    restore_note: str = ""
    notes: list[str] = field(default_factory=list)
    sustained: list[SustainedRow] = field(default_factory=list)
    sustained_s: float = 0.0
    durability: list[DurabilityRow] = field(default_factory=list)
    steady: list[SteadyRow] = field(default_factory=list)
    durability_s: float = 0.0
    openloop: list[OpenLoopRow] = field(default_factory=list)
    openloop_s: float = 0.0  # seconds of each open-loop window
    openloop_warmup_s: float = 0.0  # seconds at the window's rate before it, not counted
