"""The proxy's configuration snapshot: APIs, keys and policies held in memory.

model.py is the immutable snapshot and its lookups (pure); keys.py hashes and makes API
keys; yaml_source.py loads a snapshot from a declarative file (DB-less mode). A source
is anything with ``load()`` returning a Snapshot and ``watch(apply)`` that calls
``apply`` with each newer snapshot, so PostgreSQL plugs in beside the YAML file.
"""
