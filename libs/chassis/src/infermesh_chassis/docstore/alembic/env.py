"""Alembic's environment for every store: the revisions run on the connection (and in the
transaction) that :func:`infermesh_chassis.docstore.migrate` hands over."""

from alembic import context

context.configure(
    connection=context.config.attributes["connection"], target_metadata=context.config.attributes["metadata"]
)
with context.begin_transaction():
    context.run_migrations()
