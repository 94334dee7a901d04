"""Writes the churn example's offline data (``data/*.csv``): 200 customers, profiles and weekly activity.

Event times end shortly before now, so the views' TTLs hold when the demo runs; run it again
(``.venv/bin/python services/data-gateway/examples/churn/make_data.py``) when the data has aged.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

CUSTOMERS = 200
HERE = Path(__file__).resolve().parent


def main() -> None:
    """Write data/customer_profile.csv and data/customer_activity.csv."""
    rng = random.Random(7)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(days=35)
    (HERE / "data").mkdir(exist_ok=True)
    with (HERE / "data" / "customer_profile.csv").open("w") as out:
        out.write("customer_id,plan,tenure_days,signup_at,region,event_time\n")
        for customer in range(1, CUSTOMERS + 1):
            tenure = rng.randint(10, 2000)
            changed = start + timedelta(hours=customer)
            signup = (changed - timedelta(days=tenure)).isoformat()
            plan, region = rng.choice(["basic", "pro", "max"]), rng.choice(["eu-west", "us-east", "ap-south"])
            out.write(f"{customer},{plan},{tenure},{signup},{region},{changed.isoformat()}\n")
    with (HERE / "data" / "customer_activity.csv").open("w") as out:
        out.write("customer_id,spend_30d,orders_30d,support_tickets_30d,last_login_at,event_time\n")
        for week in range(5):
            for customer in range(1, CUSTOMERS + 1):
                at = start + timedelta(days=7 * week, minutes=customer)
                login = (at - timedelta(hours=rng.randint(1, 300))).isoformat()
                spend = round(rng.lognormvariate(4, 1), 2)
                tickets = rng.choice([0, 0, 0, 1, 2])
                out.write(f"{customer},{spend},{rng.randint(0, 15)},{tickets},{login},{at.isoformat()}\n")


if __name__ == "__main__":
    main()
