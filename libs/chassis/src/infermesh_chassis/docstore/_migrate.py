"""A store's schema: its tables, and the Alembic revisions that build them, applied at open."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect

from infermesh_chassis.logs import get_logger

__all__ = ["Schema", "migrate"]

_ENVIRONMENT = Path(__file__).with_name("alembic")
_log = get_logger("infermesh_chassis.docstore")


@dataclass(frozen=True, slots=True)
class Schema:
    """A store's tables (``metadata``), and the folder of Alembic revision files that build them.

    ``baseline`` names the revision equal to the schema a database had when the store created its
    tables itself, before it had migrations; such a database (it has ``baseline_table``, and no
    ``alembic_version``) is stamped with it rather than built again.
    """

    metadata: MetaData
    revisions: Path
    baseline: str = ""
    baseline_table: str = ""


def migrate(conn: Connection, schema: Schema, revision: str = "head") -> None:
    """Bring the schema on ``conn`` to ``revision``, up or down (the newest unless told: a test builds
    an older schema, or goes back to one, with it), in ``conn``'s transaction (logged when that
    changed anything)."""
    config = Config()
    config.set_main_option("script_location", str(_ENVIRONMENT))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(schema.revisions))
    config.attributes["connection"] = conn
    config.attributes["metadata"] = schema.metadata
    found = MigrationContext.configure(conn).get_current_revision()
    adopted = False
    if schema.baseline and found is None:
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables and schema.baseline_table in tables:
            command.stamp(config, schema.baseline)
            adopted = True
    if found is not None and revision != found and revision in _older(config, found):
        command.downgrade(config, revision)
    else:
        command.upgrade(config, revision)
    now = MigrationContext.configure(conn).get_current_revision()
    if now != found:
        _log.info("store_schema_migrated", revisions=str(schema.revisions), found=found or "", now=now, adopted=adopted)


def _older(config: Config, revision: str) -> set[str]:
    """The revisions ``revision`` stands on."""
    return {script.revision for script in ScriptDirectory.from_config(config).iterate_revisions(revision, "base")}
