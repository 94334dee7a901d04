"""The model registry: models, versions, aliases, traffic policies, rollouts, leases and the audit log, in SQL.

SQLite by default (one file, WAL), PostgreSQL when ``registry_url`` says so, through the chassis'
store's document layer (:class:`infermesh_chassis.docstore.DocumentStore`: documents, audit log,
revision); the rules live once, above it. Split along its seams:

- :mod:`.database`: the tables, their Alembic revisions (``migrations/``) and the store;
- :mod:`.documents`: records as the JSON documents stored and shown in the audit log;
- :mod:`.tables`: reads and writes of those documents (their kinds, keys and index columns), and
  audit entries, in one transaction;
- :mod:`.lifecycle`: the rules (transitions, what traffic and aliases may point at, promote and
  rollback);
- :mod:`.leases`: named leases with an expiry (one rollout controller per model);
- :mod:`.operations`: :class:`Registry`, every read and audited write, and :func:`open_registry`.
"""

from infermesh_model_gateway.registry.database import open_database
from infermesh_model_gateway.registry.documents import model_doc, rollout_doc, version_doc
from infermesh_model_gateway.registry.leases import Leases
from infermesh_model_gateway.registry.lifecycle import ALIAS_PATTERN, PRODUCTION
from infermesh_model_gateway.registry.operations import Registry, open_registry
from infermesh_model_gateway.registry.tables import Tx

_Tx = Tx
"""The name :class:`Tx` had before the registry became a package (tests write through it)."""

__all__ = [
    "ALIAS_PATTERN",
    "PRODUCTION",
    "Leases",
    "Registry",
    "Tx",
    "model_doc",
    "open_database",
    "open_registry",
    "rollout_doc",
    "version_doc",
]
