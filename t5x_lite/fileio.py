"""Every file t5x_lite reads or writes goes through here, so that any path may be local
or a URL that `etils.epath` handles: gs:// (needs the `gcsfs` package, or TensorFlow),
s3://, az://, hf://.

Local paths behave as `os` and `open` do. A file that must survive a crash whole
(config.json, heads.json, a tokenizer) is written under a temporary name and renamed,
which is atomic on a local disk. Object stores have no rename, but they never show a
half-written object either: a file there is uploaded in one piece when it is closed,
so `write_bytes` writes it directly. Object stores cannot append: a file that grows
(metrics.jsonl) is rewritten whole (see `train/metrics.py`), and `open_for_append` is
for local files only.

Libraries that read only local file names get bytes from `read_bytes` instead
(sentencepiece, safetensors, tokenizers); those that write only to local names
(sentencepiece training, TensorBoard, exporters) write into a local directory that is
then copied to its destination (`staged_directory`).

On paths as strings: `os.path.basename`, `dirname` and `splitext` only cut strings and
are right for URLs too; `os.path.abspath` and `normpath` are not ("gs://b/x" becomes
"<cwd>/gs:/b/x"): use `absolute` and `join` from here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

from t5x_lite.errors import UserError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# The fsspec implementation behind each scheme etils.epath knows (gs:// also works
# through TensorFlow when that is installed, which t5x_lite never needs).
_BACKEND_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


def is_url(path: str) -> bool:
    """True for `scheme://...` (gs://, s3://, ...), False for a local path."""
    return _URL.match(os.fspath(path)) is not None


def join(path: str, *names: str) -> str:
    """`os.path.join` for local paths; a URL keeps its `scheme://`."""
    if is_url(path):
        return posixpath.join(path, *names)
    return os.path.join(path, *names)


def absolute(path: str) -> str:
    """`os.path.abspath` for local paths; a URL is absolute already and is returned as is."""
    return os.fspath(path) if is_url(path) else os.path.abspath(path)


def as_path(path: str) -> epath.Path:
    """`path` as an `epath.Path`; UserError for a scheme etils.epath does not handle."""
    try:
        return epath.Path(path)
    except KeyError:
        scheme = _URL.match(os.fspath(path)).group(1)
        known = ", ".join(f"{name}://" for name in _BACKEND_PACKAGES)
        raise UserError(
            f"{path}: {scheme}:// paths are not supported; use a local path or {known}"
        ) from None


def _backend_errors(function):
    """A missing fsspec backend (gcsfs for gs://) becomes a one-line UserError saying
    what to install, instead of an ImportError from deep inside fsspec."""

    @functools.wraps(function)
    def wrapped(*paths, **kwargs):
        try:
            return function(*paths, **kwargs)
        except ImportError:
            url = next((p for p in paths if isinstance(p, str) and is_url(p)), None)
            if url is None:
                raise
            scheme = _URL.match(url).group(1)
            package = _BACKEND_PACKAGES[scheme]  # as_path refused any other scheme
            raise UserError(
                f"{url}: {scheme}:// paths need {package}; pip install {package}"
            ) from None

    return wrapped


# --- Queries ------------------------------------------------------------------------


@_backend_errors
def exists(path: str) -> bool:
    return as_path(path).exists()


@_backend_errors
def isdir(path: str) -> bool:
    """A directory; on an object store, a prefix that holds at least one object."""
    return as_path(path).is_dir()


@_backend_errors
def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    return as_path(path).is_file()


@_backend_errors
def listdir(path: str) -> list[str]:
    """The names in directory `path`, as `os.listdir` gives them (in no set order)."""
    return [child.name for child in as_path(path).iterdir()]


@_backend_errors
def modified_ns(path: str) -> int:
    """Modification time in nanoseconds (whole seconds on object stores; 0 where the
    store does not say)."""
    if not is_url(path):
        return os.stat(path).st_mtime_ns
    return as_path(path).stat().mtime * 1_000_000_000


# --- Reading ------------------------------------------------------------------------


@_backend_errors
def read_bytes(path: str) -> bytes:
    return as_path(path).read_bytes()


def read_text(path: str) -> str:
    """The file decoded as UTF-8, line endings kept as they are."""
    return read_bytes(path).decode("utf-8")


@_backend_errors
def read_head(path: str, num_bytes: int) -> bytes:
    """The first `num_bytes` bytes (fewer if the file is shorter), without reading the
    rest: a ranged read on an object store."""
    with as_path(path).open("rb") as f:
        return f.read(num_bytes)


def files_equal(path: str, other: str) -> bool:
    """Same bytes (`filecmp.cmp(..., shallow=False)` for any two paths)."""
    return read_bytes(path) == read_bytes(other)


# --- Writing ------------------------------------------------------------------------


@_backend_errors
def makedirs(path: str) -> None:
    """Makes `path` and its parents if missing (on an object store there is nothing to
    make: a directory exists once a file is written under it)."""
    as_path(path).mkdir(parents=True, exist_ok=True)


@_backend_errors
def write_bytes(path: str, data: bytes) -> None:
    """Writes the file whole: locally under a temporary name, then renamed over `path`,
    so a crash leaves the old file or the new one, never part of it; on an object store
    as one upload, which is just as whole. The directory must exist (`makedirs`)."""
    if is_url(path):
        as_path(path).write_bytes(data)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """`write_bytes` of `text` in UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def open_for_append(path: str):
    """A local text file opened to append to (made if missing). Object stores cannot
    append: callers rewrite such files whole with `write_text` instead."""
    if is_url(path):
        raise ValueError(f"{path}: object stores cannot append; rewrite the file whole")
    return open(path, "a", encoding="utf-8")


def copy_file(source: str, target: str) -> None:
    """Copies one file, between any two backends; written whole, as `write_bytes`."""
    write_bytes(target, read_bytes(source))


def copy_tree(source: str, target: str) -> None:
    """Copies directory `source` to `target`, which must not exist or be empty. Locally
    the copy is made beside `target` and renamed into place, so `target` never holds
    part of it; on an object store the files are copied one by one."""
    with staged_directory(target) as staging:
        _copy_into(source, staging)


def _copy_into(source: str, target: str) -> None:
    makedirs(target)
    for name in listdir(source):
        path = join(source, name)
        if isdir(path):
            _copy_into(path, join(target, name))
        else:
            copy_file(path, join(target, name))


@_backend_errors
def remove_tree(path: str) -> None:
    """Removes a directory and everything under it; nothing if there is no directory."""
    if not is_url(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        return
    as_path(path).rmtree(missing_ok=True)


@contextlib.contextmanager
def staged_directory(target: str) -> Iterator[str]:
    """A local directory to fill; when the block ends without error it becomes `target`
    (which must not exist or be empty), and after an error nothing is left behind.

    Locally it is a sibling of `target`, renamed onto it: all or nothing. For a URL it is
    a temporary directory whose files are then uploaded one by one (an object store
    has no directory rename), so a crash during the upload can leave part of them.
    """
    if is_url(target):
        with tempfile.TemporaryDirectory(prefix="t5x_lite-staging-") as staging:
            yield staging
            _copy_into(staging, target)
        return
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide the directory from others
    try:
        yield staging
        os.replace(staging, target)  # replaces an empty directory, fails on a full one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
