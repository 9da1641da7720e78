"""``python -m sfdfuse_core`` runs the ``sfdfuse`` command line."""
import sys

from sfdfuse_core.cli import main

sys.exit(main())
