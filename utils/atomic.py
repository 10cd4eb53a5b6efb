"""Files written whole or not at all: a temporary file in the same folder, renamed into place, so a
crash (even SIGKILL) or a full disk leaves the previous file (or none) under the final name."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, sync: bool = False, exclusive: bool = False) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as handle: handle.write(...)``: ``path`` appears only once the block
    has finished, with the usual file mode (mkstemp makes 0600 files); ``sync`` flushes it to disk
    first. ``exclusive``: publish only if ``path`` does not exist (FileExistsError otherwise, the
    other file kept). On any error the temporary file is removed and the error raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if exclusive:
            _publish_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _publish_new(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless that name exists: a hard link is created or refused in one
    step, where checking and then renaming leaves a window for another process."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        # On NFS a retried link can report "exists" for the link it made itself.
        if os.path.samefile(tmp, path):
            os.unlink(tmp)
            return
        raise
    except OSError:  # a file system without hard links: the rename, without the guarantee
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)
