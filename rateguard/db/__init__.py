"""The control plane's PostgreSQL: schema migrations, queries, demo data.

migrations/*.sql are applied in order by migrate.py; repository.py holds every query
and the operations the management API, the CLI and the seed share (each change is
validated by validate.py, written with its audit entry in one transaction, and
announced to the proxies by NOTIFY); connection.py makes pools.
"""
