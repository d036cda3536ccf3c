"""Upload a local dataset folder to S3, file by file (``make s3-upload``, tests, ``make bench``)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from pipelines.storage.base import StorageError
from pipelines.storage.s3 import S3Storage


def local_files(src: str | os.PathLike, exclude: tuple[str, ...] = ()) -> list[tuple[Path, str]]:
    """Every regular file under ``src`` as ``(path, key relative to src)``, sorted.

    Symlinks are followed, hidden files included; the folders directly under ``src`` named in
    ``exclude`` are left out.

    Raises:
        StorageError: ``src`` is not a directory or holds no file.
    """
    src = Path(src)
    if not src.is_dir():
        raise StorageError(f"{src} is not a directory: give the dataset folder to upload")
    files = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        if Path(dirpath) == src:
            dirnames[:] = [d for d in dirnames if d not in exclude]
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file():
                files.append((path, path.relative_to(src).as_posix()))
    if not files:
        raise StorageError(f"{src} holds no files: nothing to upload")
    return files


def upload_tree(
    src: str | os.PathLike,
    storage: S3Storage,
    *,
    workers: int = 8,
    progress: bool = True,
    exclude: tuple[str, ...] = (),
) -> tuple[int, int]:
    """Upload every file under ``src`` to ``storage`` (key: path relative to ``src``).

    Folders directly under ``src`` named in ``exclude`` are left out. ``workers`` files upload at
    once (threads); large files go as multipart uploads (:meth:`S3Storage.put_file`); a tqdm bar
    shows bytes when ``progress``.

    Returns:
        ``(files, bytes)`` uploaded.

    Raises:
        pipelines.storage.base.StorageError: ``src`` is not a directory or is empty, or an upload
            failed (the first failure; the others stop).
    """
    from tqdm import tqdm

    files = local_files(src, exclude)
    total = sum(path.stat().st_size for path, _ in files)
    done_bytes = 0
    with (
        tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc="upload") as bar,
        ThreadPoolExecutor(workers, thread_name_prefix="s3-upload") as pool,
    ):
        futures = {pool.submit(storage.put_file, key, path): path for path, key in files}
        try:
            for future in as_completed(futures):
                future.result()
                size = futures[future].stat().st_size
                done_bytes += size
                bar.update(size)
        finally:
            for future in futures:
                future.cancel()
    return len(files), done_bytes
