"""The data plane. The request path, in the order a request meets it:

    http_server.py     the server every connection shares: timeouts, the sweep
    connection.py      bytes in: parse (httptools), pipelining, flow control, deadlines
    request_head.py    checks on a request head: Host, versions, X-Request-Id, Date (pure)
    exchange.py        one request and its response, streamed both ways; its timeouts
    client_address.py  who the client is behind a trusted ingress (pure)
    gateway.py         route -> authenticate -> limit  (no I/O but the limiter call)
    routing.py         host + longest path prefix -> API (pure)
    ../limiter/        the limiter: circuit, failure modes, Redis stores, Lua script
    upstream.py        forward: pooled keep-alive connections, streamed both ways
    headers.py         hop-by-hop filtering, X-Forwarded-*, Forwarded, Via, RateLimit-* (pure)
    relay.py           WebSockets after the upstream's 101: bytes both ways
    recorder.py        metrics and the event of a finished exchange
    metrics.py         Prometheus metrics, bounded labels
    app.py             lifecycle: start, health, metrics, SIGTERM drain
"""
