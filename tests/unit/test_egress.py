"""The one egress policy (rateguard/net/egress.py): every IPv6 form that embeds an IPv4
address is judged as that address, and the management API's 422 gives the reason."""

import pytest

from rateguard.alerts.store import channel
from rateguard.db import validate
from rateguard.db.errors import Invalid
from rateguard.net.egress import ALWAYS, STRICT

METADATA_FORMS = ["169.254.169.254", "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]",
                  "[::a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]", "[64:ff9b:1::a9fe:a9fe]",
                  "[2002:a9fe:a9fe::]", "2852039166", "0xA9FEA9FE", "metadata.google.internal",
                  "[fe80::1]", "0.0.0.0", "[::]", "224.0.0.1", "[ff02::1]"]
PRIVATE_FORMS = ["127.0.0.1", "10.0.0.1", "192.168.1.1", "[::1]", "localhost",
                 "[::ffff:127.0.0.1]", "[::7f00:1]", "[64:ff9b::10.0.0.1]", "[2002:7f00:1::]",
                 "[fd00::1]"]


@pytest.mark.parametrize("host", METADATA_FORMS)
def test_never_allowed_in_any_mode(host):
    assert ALWAYS.check_host(host) and STRICT.check_host(host)


@pytest.mark.parametrize("host", PRIVATE_FORMS)
def test_private_and_loopback_only_outside_production(host):
    assert ALWAYS.check_host(host) is None
    assert "ALLOW_PRIVATE_UPSTREAMS" in STRICT.check_host(host)


@pytest.mark.parametrize("host", ["api.example.com", "93.184.216.34", "[2606:2800:220:1::1]"])
def test_public_destinations_pass(host):
    assert ALWAYS.check_host(host) is None and STRICT.check_host(host) is None


@pytest.mark.parametrize("url,words", [
    ("http://[::a9fe:a9fe]/", "169.254.169.254"),
    ("http://169.254.169.254/latest", "never allowed"),
    ("http://10.0.0.1:8080/v1", "ALLOW_PRIVATE_UPSTREAMS"),
])
def test_the_management_api_gives_the_reason(url, words):
    with pytest.raises(Invalid) as caught:
        validate.api({"name": "a", "prefix": "/a", "upstream_url": url}, egress=STRICT)
    assert caught.value.field == "upstream_url" and words in str(caught.value)


def test_an_unchanged_upstream_is_not_checked_again():
    current = {"name": "a", "prefix": "/a", "upstream_url": "http://10.0.0.1/", "host": None}
    assert validate.api({"name": "b"}, current, STRICT)["name"] == "b"
    with pytest.raises(Invalid):
        validate.api({"upstream_url": "http://10.0.0.2/"}, current, STRICT)


@pytest.mark.parametrize("host", ["169.254.169.254", "metadata.google.internal", "10.0.0.1",
                                  "127.0.0.1"])
def test_smtp_hosts_meet_the_policy(host):
    body = {"name": "m", "kind": "smtp", "host": host, "from": "a@example.com",
            "to": ["b@example.com"]}
    with pytest.raises(Invalid) as caught:
        channel(body, STRICT)
    assert caught.value.field == "host"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://[::ffff:10.0.0.1]/"])
def test_webhooks_meet_the_policy(url):
    with pytest.raises(Invalid):
        channel({"name": "w", "kind": "webhook", "url": url}, STRICT)
    assert channel({"name": "w", "kind": "webhook", "url": url}, ALWAYS)[0]["kind"] == "webhook"


def test_a_delivery_error_never_keeps_a_urls_credentials():
    from rateguard.alerts.notify import without_credentials

    assert without_credentials("InvalidURL: https://user:s3cret@hooks.example.com/x") \
        == "InvalidURL: https://***:***@hooks.example.com/x"
    assert without_credentials("timed out after 10s") == "timed out after 10s"
