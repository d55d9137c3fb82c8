"""Baseline: nginx as a keep-alive reverse proxy in front of the same upstream.

No keys, no limits, no events: the floor a proxy can reach on one core. One worker
process, access log off, HTTP/1.1 with a keep-alive pool to the upstream. Runs only
where the ``nginx`` binary exists (Debian: ``apt-get install nginx-light``).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def nginx_path() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
         if Path(p).exists()), None)


def config(workdir: Path, port: int, upstream_port: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    text = f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {temp['body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    tcp_nodelay on;
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffers 8 64k;
            proxy_buffer_size 16k;
        }}
    }}
}}
"""
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def command(conf: Path, workdir: Path) -> list[str]:
    return [nginx_path() or "nginx", "-p", str(workdir), "-e", str(workdir / "error.log"),
            "-c", str(conf), "-g", "daemon off;"]
