"""Route ownership in the snapshot (PostgreSQL mode): an API routes only on a host its
workspace owns, and an owned host never falls back to another workspace's any-host
routes. YAML mode (no owners) routes exactly as before."""

from rateguard.proxy.routing import match
from rateguard.snapshot.model import Api, Snapshot, Upstream


def api(id, ws, prefix, host=None):
    return Api(id, ws, prefix, Upstream.parse(f"http://{id}.up:8080"), host=host)


def routed(snap, host, path):
    found = match(snap.routes, host, path)
    return found and found[0].id


def test_yaml_mode_routes_every_api():
    snap = Snapshot(apis=(api("a", "A", "/ux"), api("b", "B", "/ux", host="h")))
    assert snap.unrouted == ()
    assert routed(snap, "h", "/ux/1") == "b" and routed(snap, "other", "/ux/1") == "a"


def test_an_api_on_a_host_its_workspace_does_not_own_does_not_route():
    apis = (api("a", "A", "/ux"), api("b", "B", "/ux", host="h"),
            api("b2", "B", "/", host="h"), api("b3", "B", "/ux/hello", host="h"))
    snap = Snapshot(apis=apis, host_owners={})
    assert {x.id for x in snap.unrouted} == {"b", "b2", "b3"}
    for path in ("/ux", "/ux/hello", "/ux/x"):
        assert routed(snap, "h", path) == "a"
        assert routed(snap, "other", path) == "a"
    assert routed(snap, "h", "/elsewhere") is None


def test_reserved_any_host_routes_only_for_their_workspace():
    snap = Snapshot(apis=(api("a", "A", "/ux"), api("b", "B", "/uy")),
                    host_owners={"*": "A"})
    assert [x.id for x in snap.unrouted] == ["b"]
    assert routed(snap, "x", "/ux") == "a" and routed(snap, "x", "/uy") is None


def test_an_owned_host_is_closed_to_other_workspaces_any_host_routes():
    apis = (api("a", "A", "/"), api("a-ux", "A", "/ux"), api("b", "B", "/orders", host="b.test"),
            api("b-any", "B", "/bee"))
    snap = Snapshot(apis=apis, host_owners={"b.test": "B"})
    assert snap.unrouted == ()
    assert routed(snap, "b.test", "/orders/1") == "b"
    assert routed(snap, "b.test", "/ux") is None  # A's any-host route: not on B's host
    assert routed(snap, "b.test", "/anything") is None
    assert routed(snap, "b.test", "/bee/1") == "b-any"  # B's own any-host routes apply
    assert routed(snap, "other", "/ux/1") == "a-ux" and routed(snap, "other", "/bee") == "b-any"
    assert routed(snap, "other", "/orders") == "a"


def test_an_owned_host_without_apis_answers_nothing_of_others():
    snap = Snapshot(apis=(api("a", "A", "/"),), host_owners={"b.test": "B"})
    assert routed(snap, "b.test", "/x") is None and routed(snap, "a.test", "/x") == "a"
