"""The benchmark's parts; ``scripts/bench.py`` is its command.

seed (the seeded users and database copies), postgres (the bench's PostgreSQL server), servers (the
processes under test), wrk (the load, with its scripts in lua/), paced (requests at a fixed rate: the
open-loop client), scenarios (the plan), runner (one sample of a scenario), run (the whole run),
openloop (latency at 25, 50 and 75% of each scenario's capacity), sustained, timeline,
profile, objectstore (the local S3 server and the requests it logs), relay (a delay between Litestream
and it), restore (Litestream from the local S3 server), durability (DURABILITY local against
replicated), pricing (object-store requests at list prices), results and report (the tables and the
plot).
"""
