"""Reading a file the user names (a spec, a report, a model's config) without trusting it: its kind and size are
checked from stat before it is opened, at most the limit is read, and a binary or non-UTF-8 file is refused, so
/dev/zero, a 40 GB file or a checkpoint given by mistake end in one clear line instead of a hang or a parser's
traceback."""
from __future__ import annotations

import os
import stat
from pathlib import Path

MODEL_CONFIG_LIMIT = 8 * 2**20  # a model's config.json / model_index.json is a few KB; this is far above any real one


def read_text_file(path: str | Path, limit: int, what: str, error: type[Exception]) -> str:
    """The text of a file the user gives the lab (a spec, a report), checked before any parser sees it. Its size
    is taken from stat before it is opened, so a huge file is never read; `error` is the class the caller's
    command shows (SpecError, ReportFormatError), its message naming the file, the cause and what is allowed."""
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            raise error(f"{path}: not a regular file (a folder, a device or a pipe); allowed: a {what}")
        _check_size(path, status.st_size, limit, what, error)
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # bounded: the file may have grown since stat
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    _check_size(path, len(data), limit, what, error)
    return _utf8_text(path, data, what, error)


def _check_size(path, size: int, limit: int, what: str, error: type[Exception]) -> None:
    if size > limit:
        raise error(f"{path}: {size:,} bytes is too big for a {what}; allowed: at most {limit:,} bytes "
                    f"({limit / 2**20:g} MiB)")


def _utf8_text(path, data: bytes, what: str, error: type[Exception]) -> str:
    # NUL is no character of a TOML or JSON text: a file holding one is binary (or saved as UTF-16)
    nul = data.find(b"\0")
    if nul >= 0:
        raise error(f"{path}: not a text file (a NUL byte at byte {nul:,}); allowed: a {what} in UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a text file (not UTF-8 at byte {e.start:,}); allowed: a {what} in UTF-8 "
                    f"text") from None

