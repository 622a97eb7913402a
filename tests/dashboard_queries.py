"""The Grafana dashboard's queries, for tests: every target's PromQL, and the same made concrete
(Grafana's variables substituted) so it can be sent to Prometheus's /api/v1/query as it stands.

    for title, ref_id, expr in panel_queries(DASHBOARD):
        httpx.get(f"{prometheus}/api/v1/query", params={"query": concrete(expr)})
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

#: The dashboard's own template variables: "All" selects them with their allValue, `.*`.
TEMPLATE_VARIABLES = ("host", "replica")


def load(path: Path | str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def iter_panels(dashboard: dict) -> Iterator[tuple[str, dict]]:
    """(title of the row the panel sits in, panel) for every panel that is not a row.

    An expanded row's panels follow it at the top level; a collapsed row keeps them in its own
    `panels`. Panels above the first row belong to no row ("").
    """
    row = ""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            row = panel.get("title", "")
            for inner in panel.get("panels") or []:
                yield row, inner
            continue
        yield row, panel


def panel_queries(path: Path | str) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) for every target of every panel, collapsed rows' panels included."""
    return [(panel.get("title", ""), target.get("refId", ""), target.get("expr", ""))
            for _, panel in iter_panels(load(path)) for target in panel.get("targets") or []]


def concrete(expr: str, rate_interval: str = "1m", *, interval: str | None = None, range_: str = "1h",
             variables: tuple[str, ...] = TEMPLATE_VARIABLES) -> str:
    """``expr`` as Grafana would send it with every template variable on All: the interval macros
    become durations and ``$host``, ``${host}``, ``${host:regex}`` (likewise the other variables)
    become ``.*``. Anything else written with ``$`` is left alone, so a check can find it."""
    interval = interval or rate_interval
    macros = {"__rate_interval": rate_interval, "__interval": interval, "__range": range_}
    names = "|".join(re.escape(name) for name in (*macros, *variables))
    # `\b` keeps $__interval_ms and $hostname from matching $__interval and $host.
    pattern = re.compile(r"\$\{(%s)(?::\w+)?\}|\$(%s)\b" % (names, names))

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return macros.get(name, ".*")

    return pattern.sub(value, expr)
