"""The run's plan: which server under which load, and what each is compared with."""

from __future__ import annotations

from dataclasses import dataclass

# A server name ending so runs under this gunicorn worker class instead of gunicorn.conf.py's.
OTHER_LOOP = ("-asyncio", "aiohttp.GunicornWebWorker")
# A server name ending so runs from the checkout given with --before (another revision of the service).
BEFORE = "-before"


@dataclass(frozen=True)
class Scenario:
    title: str
    server: str  # "reference", "service", "postgres" or "stack"
    kind: str  # the wrk script: "get", "put" or "mix"
    users: int  # users seeded, and the range GETs draw from
    baseline: str | None = None  # the title of the scenario whose reference run is 100%


def titles(users: int) -> tuple[str, str, str]:
    """The titles of GET, PUT and the mix over ``users`` seeded users, as the tables show them."""
    return f"GET, {users:,} users", "PUT (new and existing users)", "90% GET / 10% PUT"


def scenarios(
    small: int,
    medium: int,
    large: int,
    with_stack: bool,
    sqlite: bool = True,
    postgres: bool = False,
    other_loop: bool = False,
    before: bool = False,
) -> list[Scenario]:
    """The run's plan: for each of GET, PUT and the mix, the bare app, then SQLite, then PostgreSQL;
    with ``other_loop``, the bare app and SQLite under the other worker class too."""
    get, put, mix = titles(medium)
    found: list[Scenario] = []
    suffix = OTHER_LOOP[0]
    for title, kind in ((get, "get"), (put, "put"), (mix, "mix")):
        found.append(Scenario(title, "reference", kind, medium))
        if sqlite:
            found.append(Scenario(title, "service", kind, medium, baseline=title))
        if sqlite and other_loop:
            found.append(Scenario(title, "reference" + suffix, kind, medium))
            found.append(Scenario(title, "service" + suffix, kind, medium, baseline=title))
        if sqlite and before:
            found.append(Scenario(title, "service" + BEFORE, kind, medium, baseline=title))
        if postgres:
            found.append(Scenario(title, "postgres", kind, medium, baseline=title))
    if not sqlite:
        return found
    found += [
        Scenario(f"GET, {small:,} users", "service", "get", small),
        Scenario(f"GET, {large:,} users", "service", "get", large, baseline=f"GET, {small:,} users"),
    ]
    if with_stack:
        found += [
            Scenario(get, "stack", "get", medium, baseline=get),
            Scenario(put, "stack", "put", medium, baseline=put),
            Scenario(mix, "stack", "mix", medium, mix),
        ]
    return found


def sustained_scenarios(users: int, with_stack: bool, before: bool = False) -> list[Scenario]:
    """PUTs, then the mix, on the production server alone and on the whole stack with Litestream;
    with ``before``, each right after the same under the earlier revision (--before)."""
    servers: tuple[str, ...] = ("service", "stack") if with_stack else ("service",)
    if before:
        servers = tuple(name for server in servers for name in (server + BEFORE, server))
    return [
        Scenario(title, server, kind, users)
        for title, kind in (("PUT, sustained", "put"), ("90% GET / 10% PUT, sustained", "mix"))
        for server in servers
    ]


def openloop_scenarios(
    users: int, with_stack: bool, sqlite: bool = True, postgres: bool = False
) -> list[Scenario]:
    """GET, PUT and the mix on the server alone, the whole stack and the PostgreSQL profile: the open
    loop's plan, and with ``--only openloop`` the wrk scenarios that measure their capacity."""
    servers = [*(["service"] if sqlite else []), *(["stack"] if sqlite and with_stack else [])]
    servers += ["postgres"] if postgres else []
    return [
        Scenario(title, server, kind, users)
        for title, kind in zip(titles(users), ("get", "put", "mix"), strict=True)
        for server in servers
    ]
