"""File-system helpers shared by everything that writes files atomically.

Weights, checkpoints and training data are written as a temporary sibling, flushed and fsynced,
moved into place with ``os.replace``, and then the folder is fsynced so the rename itself
survives a power cut.
"""
import os
from pathlib import Path
from typing import Union


def fsync_dir(folder: Union[str, os.PathLike]) -> None:
    """Flush a folder's entries (a rename into it) to disk.

    Best effort: a platform or file system that cannot open or sync a folder is skipped.

    :param folder: the folder that received a new or renamed file.
    """
    try:
        fd = os.open(str(Path(folder)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
