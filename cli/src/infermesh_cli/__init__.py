"""The ``infermesh`` command: run and inspect the local mesh."""
