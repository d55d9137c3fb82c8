"""`rateguard analytics query`: the last requests and per-minute counts, as text tables.

Reads ClickHouse directly when CLICKHOUSE_URL names a server; with the embedded chdb
engine, which only one process may open, it reads through the running `rateguard up`
(its analytics worker serves /v1/recent and /v1/minutes).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from rateguard.errors import RateGuardError


def table(columns: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in columns]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def via_up(data_dir: Path, what: str, minutes: int, limit: int) -> dict:
    state = data_dir / "up.json"
    if not state.exists():
        raise RateGuardError(
            f"no running `rateguard up` found in {data_dir} and CLICKHOUSE_URL is not a "
            "server URL; start `rateguard up` or set CLICKHOUSE_URL=http://host:8123")
    url = json.loads(state.read_text())["analytics_url"]
    try:
        with urllib.request.urlopen(f"{url}/v1/{what}?minutes={minutes}&limit={limit}",
                                    timeout=30) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise RateGuardError(f"cannot reach the analytics worker at {url}: {exc}") from None


async def direct(url: str, database: str, what: str, minutes: int, limit: int) -> dict:
    from rateguard.analytics.clickhouse import ClickHouse, minutes_sql, recent_sql

    clickhouse = ClickHouse(url, database)
    try:
        sql = recent_sql(database) if what == "recent" else minutes_sql(database)
        columns, rows = await clickhouse.query(sql, {"minutes": minutes, "limit": limit})
    except Exception as exc:
        raise RateGuardError(f"ClickHouse query failed: {str(exc).splitlines()[0]}") from None
    finally:
        await clickhouse.close()
    return {"columns": columns, "rows": rows}
