"""Alembic's environment for the registry: migrations run on the connection (and in the transaction)
that :func:`infermesh_model_gateway.registry.database.migrate` hands over."""

from alembic import context

from infermesh_model_gateway.registry.database import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
