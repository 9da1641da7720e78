"""Sub-commands of the ``sfdfuse`` command line, one module each (see :mod:`sfdfuse_core.cli`)."""
