import pytest

from rateguard.proxy.client_address import client_address, forwarded_proto, parse_networks

TRUSTED = parse_networks("10.0.0.0/8, 127.0.0.1")


@pytest.mark.parametrize("peer,xff,expected", [
    ("203.0.113.5", b"1.2.3.4", "203.0.113.5"),           # untrusted peer: XFF ignored
    ("10.1.2.3", b"198.51.100.7", "198.51.100.7"),          # ingress in front
    ("10.1.2.3", b"6.6.6.6, 198.51.100.7, 10.9.9.9", "198.51.100.7"),  # spoofed left part
    ("10.1.2.3", b"10.0.0.2, 10.0.0.3", "10.0.0.2"),        # all hops trusted
    ("10.1.2.3", b"not-an-ip", "10.1.2.3"),                 # malformed chain
    ("10.1.2.3", None, "10.1.2.3"),
    ("::1", b"1.2.3.4", "::1"),                             # v6 peer not in the v4 list
])
def test_client_address(peer, xff, expected):
    assert client_address(peer, xff, TRUSTED) == expected


def test_no_trusted_proxies_means_the_socket_peer():
    assert client_address("10.1.2.3", b"1.2.3.4", ()) == "10.1.2.3"


def test_forwarded_proto_only_from_a_trusted_proxy():
    assert forwarded_proto("10.1.2.3", b"HTTPS", TRUSTED) == b"https"
    assert forwarded_proto("203.0.113.5", b"https", TRUSTED) == b"http"
    assert forwarded_proto("10.1.2.3", b"gopher", TRUSTED) == b"http"


def test_parse_networks_names_the_bad_entry():
    with pytest.raises(ValueError, match="'nope' is not an address or CIDR"):
        parse_networks("10.0.0.0/8,nope")
