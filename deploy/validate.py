#!/usr/bin/env python3
"""Strict schema validation of rendered Kustomize output, every error reported.

    python deploy/validate.py -k 1.30 -k 1.37 rendered/prod.yaml rendered/dev.yaml ...

For each document of each file:

* built-in kinds are validated against kubernetes-validate's *strict* JSON schemas
  (unknown fields fail) for every Kubernetes version given with -k. Unlike the
  ``kubernetes-validate`` CLI, which stops at the first error of a resource and only
  warns about an unknown apiVersion/kind, this reports every error and fails on an
  unknown apiVersion/kind;
* the custom resources the overlays use (ExternalSecret, Certificate, and
  ClusterSecretStore/SecretStore if one is added), for which kubernetes-validate has no
  schema, are checked against the small schemas below: the required fields, enums and
  field names of the operators' CRDs (external-secrets.io/v1, cert-manager.io/v1);
* a few cross-references are checked on the whole rendering: every Secret/ConfigMap a
  pod reads exists (as an object or as an ExternalSecret target), every Certificate
  covers the Ingress TLS hosts of its secret, and no object is defined twice.

Exit status 1 if anything failed. Runs in the .venv-deploy venv (needs
kubernetes-validate, which brings jsonschema and PyYAML).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml
from packaging.version import Version
from referencing import Registry, Resource

try:
    import importlib_resources as resources
except ImportError:  # pragma: no cover
    from importlib import resources  # type: ignore[no-redef]

# --------------------------------------------------------------------------- CRDs

NAME = {"type": "string", "minLength": 1, "maxLength": 253,
        "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}
DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"}
METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": NAME, "namespace": NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
CLUSTER_METADATA = {**METADATA, "required": ["name"],
                    "not": {"required": ["namespace"]}}


def _resource(api_version: str, kind: str, spec: dict, metadata: dict = METADATA) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": metadata,
            "spec": spec,
        },
        "additionalProperties": False,
    }


# external-secrets.io/v1 ExternalSecret (ESO >= 0.16), fields as in its CRD.
_REMOTE_REF = {
    "type": "object",
    "required": ["key"],
    "properties": {
        "key": {"type": "string", "minLength": 1},
        "property": {"type": "string"},
        "version": {"type": "string"},
        "conversionStrategy": {"enum": ["Default", "Unicode"]},
        "decodingStrategy": {"enum": ["Auto", "Base64", "Base64URL", "None"]},
        "metadataPolicy": {"enum": ["None", "Fetch"]},
    },
    "additionalProperties": False,
}
_STORE_REF = {
    "type": "object",
    "required": ["name", "kind"],  # kind defaults to SecretStore: we want it explicit
    "properties": {"name": NAME, "kind": {"enum": ["SecretStore", "ClusterSecretStore"]}},
    "additionalProperties": False,
}
EXTERNAL_SECRET = _resource("external-secrets.io/v1", "ExternalSecret", {
    "type": "object",
    "required": ["secretStoreRef", "target"],
    "anyOf": [{"required": ["data"]}, {"required": ["dataFrom"]}],
    "properties": {
        "refreshInterval": DURATION,
        "refreshPolicy": {"enum": ["CreatedOnce", "Periodic", "OnChange"]},
        "secretStoreRef": _STORE_REF,
        "target": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": NAME,
                "creationPolicy": {"enum": ["Owner", "Orphan", "Merge", "None"]},
                "deletionPolicy": {"enum": ["Delete", "Merge", "Retain"]},
                "immutable": {"type": "boolean"},
                "template": {"type": "object"},
            },
            "additionalProperties": False,
        },
        "data": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["secretKey", "remoteRef"],
                "properties": {
                    "secretKey": {"type": "string", "minLength": 1, "maxLength": 253,
                                  "pattern": r"^[-._a-zA-Z0-9]+$"},
                    "remoteRef": _REMOTE_REF,
                    "sourceRef": {"type": "object"},
                },
                "additionalProperties": False,
            },
        },
        "dataFrom": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    },
    "additionalProperties": False,
})

_STORE_SPEC = {
    "type": "object",
    "required": ["provider"],
    "properties": {
        "provider": {"type": "object", "minProperties": 1, "maxProperties": 1},
        "conditions": {"type": "array"},
        "controller": {"type": "string"},
        "refreshInterval": {"type": "integer", "minimum": 0},
        "retrySettings": {"type": "object"},
    },
    "additionalProperties": False,
}
CLUSTER_SECRET_STORE = _resource("external-secrets.io/v1", "ClusterSecretStore", _STORE_SPEC,
                                 CLUSTER_METADATA)
SECRET_STORE = _resource("external-secrets.io/v1", "SecretStore", _STORE_SPEC)

# cert-manager.io/v1 Certificate, fields as in its CRD.
CERTIFICATE = _resource("cert-manager.io/v1", "Certificate", {
    "type": "object",
    "required": ["secretName", "issuerRef"],
    # the cert-manager webhook refuses a Certificate without any identity
    "anyOf": [{"required": [k]} for k in
              ("commonName", "dnsNames", "ipAddresses", "uris", "emailAddresses",
               "literalSubject", "otherNames")],
    "properties": {
        "secretName": NAME,
        "issuerRef": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1},
                           "kind": {"type": "string"}, "group": {"type": "string"}},
            "additionalProperties": False,
            # cert-manager's own issuers are Issuer or ClusterIssuer
            "if": {"properties": {"group": {"const": "cert-manager.io"}}},
            "then": {"properties": {"kind": {"enum": ["Issuer", "ClusterIssuer"]}}},
        },
        "commonName": {"type": "string", "maxLength": 64},
        "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "ipAddresses": {"type": "array", "items": {"type": "string"}},
        "uris": {"type": "array", "items": {"type": "string"}},
        "emailAddresses": {"type": "array", "items": {"type": "string"}},
        "otherNames": {"type": "array", "items": {"type": "object"}},
        "literalSubject": {"type": "string"},
        "subject": {"type": "object"},
        "duration": DURATION,
        "renewBefore": DURATION,
        "renewBeforePercentage": {"type": "integer", "minimum": 1, "maximum": 99},
        "isCA": {"type": "boolean"},
        "usages": {"type": "array", "items": {"type": "string"}},
        "privateKey": {
            "type": "object",
            "properties": {
                "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                "encoding": {"enum": ["PKCS1", "PKCS8"]},
                "rotationPolicy": {"enum": ["Never", "Always"]},
                "size": {"type": "integer"},
            },
            "additionalProperties": False,
        },
        "secretTemplate": {"type": "object"},
        "keystores": {"type": "object"},
        "revisionHistoryLimit": {"type": "integer", "minimum": 1},
        "additionalOutputFormats": {"type": "array"},
        "nameConstraints": {"type": "object"},
        "encodeUsagesInRequest": {"type": "boolean"},
    },
    "additionalProperties": False,
})

CRD_SCHEMAS = {
    ("external-secrets.io/v1", "ExternalSecret"): EXTERNAL_SECRET,
    ("external-secrets.io/v1", "ClusterSecretStore"): CLUSTER_SECRET_STORE,
    ("external-secrets.io/v1", "SecretStore"): SECRET_STORE,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
}
CRD_GROUPS = {"external-secrets.io", "cert-manager.io"}

# ---------------------------------------------------------------- built-in kinds


def _schema_root() -> Any:
    return resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")


def shipped_versions() -> list[Version]:
    out = []
    for entry in _schema_root().iterdir():
        name = entry.name
        if name.startswith("v") and name.endswith("-local-strict"):
            out.append(Version(name[1:-len("-local-strict")]))
    return sorted(out)


class StrictSchemas:
    """kubernetes-validate's strict schemas for one Kubernetes minor version."""

    def __init__(self, version: str):
        wanted = Version(version)
        candidates = [v for v in shipped_versions()
                      if (v.major, v.minor) <= (wanted.major, wanted.minor)]
        if not candidates:
            raise SystemExit(f"kubernetes-validate ships no schemas for Kubernetes {version}; "
                             f"it has {', '.join(map(str, shipped_versions()))}")
        self.version = candidates[-1]
        self.dir = _schema_root().joinpath(f"v{self.version}-local-strict")
        definitions = json.loads(self.dir.joinpath("_definitions.json").read_text())
        self._registry = Resource.from_contents(definitions) @ Registry()
        self._cache: dict[tuple[str, str], Any] = {}

    def validator(self, api_version: str, kind: str):
        key = (api_version, kind)
        if key not in self._cache:
            # rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1 (as kubernetes-validate)
            group, _, ver = api_version.rpartition("/")
            prefix = f"{group.split('.')[0]}-{ver}" if group else ver
            path = self.dir.joinpath(f"{kind.lower()}-{prefix}.json")
            if not path.is_file():
                self._cache[key] = None
            else:
                schema = json.loads(path.read_text())
                registry = Resource.from_contents(schema) @ self._registry
                self._cache[key] = jsonschema.Draft202012Validator(schema, registry=registry)
        return self._cache[key]


# ------------------------------------------------------------------------ checks


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<root>"


def _leaf_errors(err: jsonschema.ValidationError) -> Iterator[jsonschema.ValidationError]:
    """The specific errors under an anyOf/oneOf, instead of one vague summary."""
    if err.context:
        for sub in err.context:
            yield from _leaf_errors(sub)
    else:
        yield err


def _ident(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def _pod_specs(doc: dict) -> Iterator[dict]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        yield spec
    elif doc.get("kind") == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif "template" in spec:
        yield (spec["template"] or {}).get("spec") or {}


def _references(pod: dict) -> Iterator[tuple[str, str]]:
    for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        for src in c.get("envFrom") or []:
            if "secretRef" in src and not src["secretRef"].get("optional"):
                yield "Secret", src["secretRef"]["name"]
            if "configMapRef" in src and not src["configMapRef"].get("optional"):
                yield "ConfigMap", src["configMapRef"]["name"]
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {})
            if "secretKeyRef" in ref and not ref["secretKeyRef"].get("optional"):
                yield "Secret", ref["secretKeyRef"]["name"]
            if "configMapKeyRef" in ref and not ref["configMapKeyRef"].get("optional"):
                yield "ConfigMap", ref["configMapKeyRef"]["name"]
    for vol in pod.get("volumes") or []:
        if "secret" in vol and not vol["secret"].get("optional"):
            yield "Secret", vol["secret"]["secretName"]
        if "configMap" in vol and not vol["configMap"].get("optional"):
            yield "ConfigMap", vol["configMap"]["name"]


def cross_checks(docs: list[dict]) -> list[str]:
    errors = []
    for ident, n in Counter(_ident(d) for d in docs).items():
        if n > 1:
            errors.append(f"{ident}: defined {n} times")

    have: set[tuple[str, str, str]] = set()
    for d in docs:
        ns = (d.get("metadata") or {}).get("namespace", "")
        have.add((d.get("kind"), ns, d["metadata"]["name"]))
        if d.get("kind") == "ExternalSecret":
            target = (d.get("spec", {}).get("target") or {}).get("name", d["metadata"]["name"])
            have.add(("Secret", ns, target))
    for d in docs:
        ns = (d.get("metadata") or {}).get("namespace", "")
        for pod in _pod_specs(d):
            for kind, name in _references(pod):
                if (kind, ns, name) not in have:
                    errors.append(f"{_ident(d)}: reads {kind} {name!r}, which the rendering "
                                  f"neither contains nor gets from an ExternalSecret")
            sa = pod.get("serviceAccountName")
            if sa and ("ServiceAccount", ns, sa) not in have:
                errors.append(f"{_ident(d)}: uses ServiceAccount {sa!r}, not in the rendering")

    tls_hosts: dict[tuple[str, str], set[str]] = {}
    for d in docs:
        if d.get("kind") == "Ingress":
            ns = d["metadata"].get("namespace", "")
            for tls in d.get("spec", {}).get("tls") or []:
                if tls.get("secretName"):
                    tls_hosts.setdefault((ns, tls["secretName"]), set()).update(tls.get("hosts") or [])
    for d in docs:
        if d.get("kind") == "Certificate":
            ns = d["metadata"].get("namespace", "")
            spec = d.get("spec") or {}
            hosts = tls_hosts.get((ns, spec.get("secretName")))
            if hosts is None:
                errors.append(f"{_ident(d)}: secretName {spec.get('secretName')!r} is used by "
                              f"no Ingress TLS entry")
            elif not hosts <= set(spec.get("dnsNames") or []):
                errors.append(f"{_ident(d)}: dnsNames miss Ingress TLS hosts "
                              f"{sorted(hosts - set(spec.get('dnsNames') or []))}")
    return errors


def validate_file(path: Path, versions: list[StrictSchemas]) -> tuple[int, list[str]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    errors: list[str] = []
    for doc in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            errors.append(f"document without apiVersion/kind: {str(doc)[:80]}")
            continue
        ident = _ident(doc)
        key = (doc["apiVersion"], doc["kind"])
        group = doc["apiVersion"].rpartition("/")[0]
        if key in CRD_SCHEMAS:
            validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
            for err in validator.iter_errors(doc):
                for leaf in _leaf_errors(err):
                    errors.append(f"{ident} [CRD {doc['apiVersion']}]: {_path(leaf)}: {leaf.message}")
            continue
        if group in CRD_GROUPS:
            errors.append(f"{ident}: {doc['apiVersion']} {doc['kind']} has no schema in "
                          f"deploy/validate.py (add its required fields to CRD_SCHEMAS)")
            continue
        for schemas in versions:
            validator = schemas.validator(*key)
            if validator is None:
                errors.append(f"{ident}: unknown apiVersion/kind {doc['apiVersion']} "
                              f"{doc['kind']} for Kubernetes {schemas.version}")
                continue
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                for leaf in _leaf_errors(err):
                    errors.append(f"{ident} [k8s {schemas.version}]: {_path(leaf)}: {leaf.message}")
    errors.extend(cross_checks([d for d in docs if isinstance(d, dict) and "metadata" in d]))
    return len(docs), errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--kubernetes-version", action="append", dest="versions",
                        help="Kubernetes version to validate against (repeatable)")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    versions = [StrictSchemas(v) for v in (args.versions or [str(shipped_versions()[-1])])]
    failed = 0
    for path in args.files:
        count, errors = validate_file(path, versions)
        label = ", ".join(str(v.version) for v in versions)
        if errors:
            failed += 1
            print(f"FAIL {path}: {len(errors)} error(s) in {count} objects (Kubernetes {label})")
            for e in errors:
                print(f"  - {e}")
        else:
            print(f"ok   {path}: {count} objects valid (strict, Kubernetes {label}; CRDs checked)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
