"""Exceptions shared across modules, and the one way a file the user keeps is (re)written."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class StepError(RuntimeError):
    """A learner step failed for a reason outside the maths (e.g. sampler workers that kept
    dying): the trainer stops with a clear message and keeps the last good checkpoint."""


class SamplerError(StepError):
    """Sampling failed: a worker died or hung more often than the retries allow, or the
    backend cannot start."""


class RunDirError(RuntimeError):
    """A run directory or output file that cannot be used: not empty for a new run, not
    writable, out of space, or holding a damaged log. Nothing the user made is touched."""


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it when the block succeeds.

    When the block fails (a full disk, an interrupt) the temporary file is removed and
    ``path`` keeps its old content: a reader never sees half a file.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# torch reports a failed write (ENOSPC among others) as this text, without the errno
_TORCH_WRITE_FAILED = ("file write failed", "unexpected pos")


def write_failure(err: BaseException, directory: str | Path) -> str | None:
    """What went wrong when writing into ``directory``, or None if ``err`` is not a write
    failure: 'no space left on DIR' for ENOSPC (or torch's text for it), else the OS's words."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on {directory}"
    if isinstance(err, RuntimeError) and any(t in str(err) for t in _TORCH_WRITE_FAILED):
        return f"no space left on {directory} (or another write failure)"
    if isinstance(err, OSError):
        name = f" {err.filename}" if err.filename else ""
        return f"cannot write{name}: {err.strerror or type(err).__name__}"
    return None
