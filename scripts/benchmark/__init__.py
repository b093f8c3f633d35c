"""The benchmark's parts; ``scripts/bench.py`` is its command.

seed (the seeded users and database copies), postgres (the bench's PostgreSQL server), servers (the
processes under test), wrk (the load, with its scripts in lua/), scenarios (the plan), runner (one
sample of a scenario), run (the whole run), sustained, timeline, profile, restore (Litestream from a
local S3 server), results and report (the tables and the plot).
"""
