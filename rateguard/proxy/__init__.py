"""The data plane. The request path, in the order a request meets it:

    http_server.py     bytes in: parse the request (httptools), stream its body
    client_address.py  who the client is behind a trusted ingress (pure)
    gateway.py         route -> authenticate -> limit  (no I/O but the limiter call)
    routing.py         host + longest path prefix -> API (pure)
    ../limiter/        the limiter: circuit, failure modes, Redis stores, Lua script
    upstream.py        forward: pooled keep-alive connections, streamed both ways
    headers.py         hop-by-hop filtering, X-Forwarded-*, RateLimit-* (pure)
    metrics.py         Prometheus metrics, bounded labels
    app.py             lifecycle: start, health, metrics, SIGTERM drain
"""
