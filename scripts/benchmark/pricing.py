"""What object-store requests cost at list prices: requests per second, per month, and in dollars.

The prices are the providers' public list prices (their pricing pages, as of 2026), per 1,000
requests, without free tiers; they change, so check the pages before relying on the dollars:

- S3 Standard, us-east-1 (https://aws.amazon.com/s3/pricing/): PUT, COPY, POST and LIST $0.005;
  GET, SELECT and all other requests $0.0004; DELETE and CANCEL free.
- Tigris Standard (https://www.tigrisdata.com/pricing/): Class A (PUT, COPY, POST, LIST) $0.005;
  Class B (GET, SELECT and the rest) $0.0005; DELETE free. Its free tier (10,000 Class A and 100,000
  Class B requests a month) is left out.

Operations are the classes of ``scripts.benchmark.objectstore.operation``: PUT, LIST, GET, DELETE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SECONDS_PER_MONTH = 30 * 24 * 3600  # 2,592,000: a month of 30 days
OPERATIONS = ("PUT", "LIST", "GET", "DELETE")


@dataclass(frozen=True)
class PriceList:
    name: str
    source: str
    usd_per_thousand: Mapping[str, float]  # by operation class

    def monthly_usd(self, per_second: Mapping[str, float]) -> float:
        """Dollars a month for requests made at ``per_second`` (by operation class) all month."""
        return sum(
            per_month(rate) * self.usd_per_thousand[operation] / 1000
            for operation, rate in per_second.items()
        )


S3_STANDARD = PriceList(
    "S3 Standard (us-east-1)",
    "https://aws.amazon.com/s3/pricing/",
    {"PUT": 0.005, "LIST": 0.005, "GET": 0.0004, "DELETE": 0.0},
)
TIGRIS = PriceList(
    "Tigris Standard",
    "https://www.tigrisdata.com/pricing/",
    {"PUT": 0.005, "LIST": 0.005, "GET": 0.0005, "DELETE": 0.0},
)
PRICE_LISTS = (S3_STANDARD, TIGRIS)


def per_month(per_second: float) -> float:
    """Requests a month (30 days) at ``per_second``."""
    return per_second * SECONDS_PER_MONTH


def per_second(counts: Mapping[str, int], seconds: float) -> dict[str, float]:
    """Counts by operation over ``seconds`` as rates, every operation class present (0 if none)."""
    return {operation: counts.get(operation, 0) / seconds for operation in OPERATIONS}
