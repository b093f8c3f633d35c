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
