import pytest
import yaml

from rateguard.errors import ConfigError
from rateguard.snapshot.keys import hash_key, new_key
from rateguard.snapshot.yaml_source import load_file, parse_config

GOOD = """
workspaces:
  - id: demo
    policies:
      - {id: p, limits: [10/s, 100/min], algorithm: sliding_log}
    apis:
      - {id: echo, prefix: /echo/, upstream: "http://127.0.0.1:9/base", policy: p,
         timeout_seconds: 2, upstream_headers: {X-Token: abc}}
    keys:
      - {id: k1, sha256: %s, policy: p, expires_at: "2030-01-01T00:00:00Z"}
"""


def test_a_good_config_builds_the_snapshot():
    key = new_key()
    snap = parse_config(yaml.safe_load(GOOD % hash_key(key)))
    assert snap.apis[0].prefix == "/echo" and snap.apis[0].timeout == 2.0
    assert snap.apis[0].upstream.base_path == "/base"
    assert snap.apis[0].upstream_headers == ((b"X-Token", b"abc"),)
    assert snap.keys_by_hash[hash_key(key)].id == "k1"
    assert snap.policy("demo", "p").header == "10;w=1, 100;w=60"
    assert key.startswith("rg_") and len(key) > 40


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c["workspaces"][0]["apis"][0].update(upstream="ftp://x"),
     "config: workspaces[0].apis[0].upstream: upstream 'ftp://x'"),
    (lambda c: c["workspaces"][0]["apis"][0].update(policy="nope"), "unknown policy 'nope'"),
    (lambda c: c["workspaces"][0]["keys"][0].update(sha256="abc"),
     "workspaces[0].keys[0].sha256: must be the 64-hex-digit"),
    (lambda c: c["workspaces"][0]["policies"][0].update(limits=["fast"]),
     "workspaces[0].policies[0]: limit 'fast'"),
    (lambda c: c["workspaces"][0]["apis"][0].update(colour="red"), "unknown field(s): colour"),
    (lambda c: c["workspaces"][0]["apis"].append(dict(c["workspaces"][0]["apis"][0], id="b")),
     "route */echo is taken twice"),
    (lambda c: c["workspaces"][0]["keys"][0].update(expires_at="soon"), "ISO 8601"),
])
def test_bad_config_names_the_field(mutate, message):
    config = yaml.safe_load(GOOD % hash_key("x"))
    mutate(config)
    with pytest.raises(ConfigError) as info:
        parse_config(config)
    assert message in str(info.value)


def test_bad_yaml_file_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("workspaces: [\n  - id: x\n   bad")
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert str(info.value).startswith("bad.yaml: not valid YAML at line")
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(str(tmp_path / "missing.yaml"))
