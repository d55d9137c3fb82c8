"""What a finished exchange leaves behind: its metrics and its event.

``Recorder`` is a base of ``http_server.ProxyServer``; ``record`` runs once per
request, from ``Exchange.finish``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rateguard.proxy.exchange import Exchange

_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}


class Recorder:
    """Needs ``inflight``, ``exchanges``, ``metrics`` (or None), ``publish`` and
    ``gateway`` (its ``event``) on the instance."""

    def record(self, exchange: Exchange) -> None:
        self.inflight -= 1
        self.exchanges.discard(exchange)
        if exchange.error_decision == "special":
            return  # health checks are not traffic
        admission = exchange.admission
        latency = time.perf_counter() - exchange.started
        api = admission.api if admission is not None else None
        status = exchange.status
        decision = exchange.error_decision or (admission.decision if admission else "error")
        metrics = self.metrics
        if metrics is not None:
            by_class, latency_hist, upstream_hist = metrics.for_api(api.id if api else "")
            child = by_class.get(_STATUS_CLASS.get(status // 100))
            if child is not None:
                child.inc()
            latency_hist.observe(latency)
            metrics.by_decision[decision].inc()
            if exchange.upstream_ms:
                upstream_hist.observe(exchange.upstream_ms / 1000.0)
        self.publish(self.gateway.event(
            exchange.request_id, exchange.ts_ms, admission,
            exchange.method.decode("latin-1"),
            (exchange.host or b"").decode("latin-1"), exchange.path,
            status, latency * 1000.0, exchange.upstream_ms, exchange.bytes_in,
            exchange.bytes_out, exchange.client_ip,
            (exchange.user_agent or b"").decode("latin-1")[:512], decision,
            exchange.close_code))
