"""Writing without half-written results: every file and directory zipo writes (models,
checkpoints, .h5ad outputs, configs, GMT files) is made under a temporary name beside its
target and renamed into place once complete, so a crash leaves the old version or the new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping

from .errors import InputError


# How to ask for an existing file to be replaced, by the language of the call (zipo.errors).
OVERWRITE = {"python": "overwrite=True", "r": "overwrite = TRUE"}


def check_target(path: str | Path, overwrite: bool = False,
                 hint: str | Mapping[str, str] = OVERWRITE) -> Path:
    """``path`` as a Path, after refusing an existing one (unless ``overwrite``; ``hint`` names
    how to ask for it, one text or one per language) and a folder that does not exist or cannot
    be written."""
    path = Path(path)
    if path.exists() and not overwrite:
        hints = hint if isinstance(hint, Mapping) else {"python": hint}
        raise InputError(f"{str(path)!r} already exists",
                         {lang: f"choose another path or pass {text}" for lang, text in hints.items()})
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {str(path)!r}: the folder {str(parent)!r} is not writable")
    return path


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = True, directory: bool = False,
                hint: str | Mapping[str, str] = OVERWRITE) -> Iterator[Path]:
    """A temporary sibling of ``path`` (a file, or with ``directory`` a folder) to write into;
    renamed onto ``path`` when the block completes, removed when it raises."""
    path = check_target(path, overwrite, hint)
    prefix = f".{path.name}.tmp-"
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise ValueError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        yield tmp
        if directory and path.exists():  # a directory cannot be renamed onto another
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_synced(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create ``path`` with ``write(fh)`` and flush it to disk before returning."""
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(path: str | Path, text: str, overwrite: bool = True,
                      hint: str | Mapping[str, str] = OVERWRITE) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically. Returns the path."""
    with atomic_path(path, overwrite=overwrite, hint=hint) as tmp:
        write_synced(tmp, lambda fh: fh.write(text.encode("utf-8")))
    return Path(path)


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
