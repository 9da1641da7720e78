"""File-system helpers shared by everything that writes or reads files that must be intact.

Weights, checkpoints and training data are written as a temporary sibling, flushed and fsynced,
moved into place with ``os.replace``, and then the folder is fsynced so the rename itself
survives a power cut. :func:`zip_problem` checks the CRC-32 of every member of a zip archive
(what ``torch.save`` writes), which ``torch.load`` does not do.
"""
import os
from pathlib import Path
from typing import Optional, Union
import zipfile
import zlib


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


def zip_problem(path: Union[str, os.PathLike]) -> Optional[str]:
    """Check every member of a zip archive against its CRC-32 (reads the whole file).

    ``torch.load`` reads the tensors of a ``torch.save`` file (a zip archive) without checking
    the CRCs, so flipped bytes in tensor data load silently as other values.

    :param path: the file.
    :return: ``None`` when the file is not a zip archive (a legacy ``torch.save`` file, or one
        too damaged to be recognised: the loader reports those) or all members are intact;
        otherwise what is wrong, naming the bad member.
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError) as exc:
        return f'damaged zip archive: {type(exc).__name__}: {exc}'
    if bad is not None:
        return f'CRC-32 mismatch in member {bad!r} (the data was altered after it was written)'
    return None
