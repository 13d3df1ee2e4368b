"""The ZrCuAl metallic-glass 4D-STEM datasets (Zenodo record 15490547), fetched with pooch.

One :func:`pooch.create` registry (file names and MD5 hashes) with ``env="FEMLIB_DATA_DIR"``:
files are cached in ``pooch.os_cache("femlib")`` (e.g. ``~/.cache/femlib`` on Linux) or in the
folder named by that environment variable, and downloaded and checked by pooch. Nothing is
downloaded unless ``allow_download=True`` is passed. pooch hashes a cached file on every fetch;
these files are gigabytes, so a stamp file ``<name>.verified`` beside a file that passed its
check (hash, size, modification time) lets a later load skip pooch's re-hash.
"""

import contextlib
import json
import logging
from pathlib import Path

__all__ = ["zrcual_1", "zrcual_2", "zrcual_3"]

_RECORD = "15490547"
_BASE_URL = f"https://zenodo.org/records/{_RECORD}/files/"
_ENV_VAR = "FEMLIB_DATA_DIR"
_REGISTRY = {
    "pos1-1.zspy": "md5:2195347310aa35d6835dc141d07f783f",
    "pos5-1.zspy": "md5:351e8bfc12f2628edc3009cd5a429f4d",
    "pos6-1.zspy": "md5:102d95883974acb8f6698dcec52676c7",
}


def _pooch():
    """The registry: cache folder from ``$FEMLIB_DATA_DIR`` or the OS cache, Zenodo URLs.

    Made on each call, so that a change of the environment variable takes effect.
    """
    import pooch

    return pooch.create(
        path=pooch.os_cache("femlib"),
        base_url=_BASE_URL,
        env=_ENV_VAR,
        registry=_REGISTRY,
        urls={name: _url(name) for name in _REGISTRY},
    )


def _data_dir():
    """Cache folder: ``$FEMLIB_DATA_DIR`` if set, else ``pooch.os_cache("femlib")``."""
    return Path(_pooch().abspath)


def _url(name):
    return f"{_BASE_URL}{name}?download=1"


def _stamp_path(path):
    return path.with_name(path.name + ".verified")


def _stamp(path, known_hash):
    st = path.stat()
    return {"hash": known_hash, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_verified(path, known_hash):
    """True if ``path`` matches ``known_hash``, hashing it only when no valid stamp exists."""
    import pooch

    stamp_file = _stamp_path(path)
    try:
        if json.loads(stamp_file.read_text()) == _stamp(path, known_hash):
            return True
    except (OSError, ValueError):
        pass
    if not pooch.file_hash(str(path), alg=known_hash.split(":")[0]) == known_hash.split(":")[1]:
        return False
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
        stamp_file.write_text(json.dumps(_stamp(path, known_hash)))
    return True


def _fetch(name, allow_download, progressbar=True):
    """Path of the verified cached file ``name``, downloading it if allowed.

    Raises
    ------
    FileNotFoundError
        If the file is not cached and ``allow_download`` is False.
    ValueError
        If the cached (and not re-downloadable) or the downloaded file fails its MD5 check.
    ConnectionError
        If the download fails.
    """
    known_hash = _REGISTRY[name]
    registry = _pooch()
    folder = Path(registry.abspath)
    path = folder / name
    url = _url(name)
    if path.is_file():
        if _is_verified(path, known_hash):
            return path
        if not allow_download:
            raise ValueError(
                f"the cached file {path} does not match its {known_hash} checksum (a partial "
                "or corrupted download?). Delete it, or pass allow_download=True to download "
                f"it again from {url}"
            )
    elif not allow_download:
        raise FileNotFoundError(
            f"{name} (ZrCuAl metallic glass, Zenodo record {_RECORD}) is not in the femlib data "
            f"cache {folder}. Pass allow_download=True to download it from {url} (a large "
            f"4D-STEM dataset: see its size on https://zenodo.org/records/{_RECORD}), or put "
            f"the file there yourself. Set the environment variable {_ENV_VAR} to use another "
            "cache folder."
        )
    try:
        fetched = registry.fetch(name, progressbar=progressbar)
    except ValueError as err:  # pooch's checksum mismatch; the bad file is not kept
        raise ValueError(
            f"the download of {name} from {url} does not match its {known_hash} checksum "
            f"(an interrupted transfer?). Try again. ({err})"
        ) from err
    except OSError as err:  # requests' errors derive from OSError
        raise ConnectionError(
            f"could not download {name} from {url}: {err}. Check the network connection, or "
            f"download the file by hand into {folder} (or the folder named by {_ENV_VAR})."
        ) from err
    path = Path(fetched)
    with contextlib.suppress(OSError):
        _stamp_path(path).write_text(json.dumps(_stamp(path, known_hash)))
    return path


class _DropZipModeWarning(logging.Filter):
    """Hide rosettasciio's warning about ``mode`` with a zip store: we pass it on purpose."""

    def filter(self, record):
        return not record.getMessage().startswith("Specifying `mode`")


def _load(name, allow_download, **kwargs):
    """Fetch ``name`` and load it as an ``FEMDiffraction2D`` (lazy ones read-only)."""
    path = _fetch(name, allow_download)
    import hyperspy.api as hs

    kwargs.setdefault("signal_type", "fem_diffraction")
    if kwargs.get("lazy", False):
        # rosettasciio opens lazy zspy files in "r+" mode (to allow saving back into them); a
        # cached reference file must not change, and zarr >= 3 refuses "r+" on a zip store.
        kwargs.setdefault("mode", "r")
    logger = logging.getLogger("rsciio.zspy._api")
    log_filter = _DropZipModeWarning()
    logger.addFilter(log_filter)
    try:
        return hs.load(path, **kwargs)
    finally:
        logger.removeFilter(log_filter)


def _public_doc(name, func):
    """Shared numpydoc text of the public loaders."""
    return f"""Load the ZrCuAl metallic-glass 4D-STEM dataset ``{name}`` (Zenodo record {_RECORD}).

    Nanobeam diffraction patterns of a ZrCuAl metallic glass, read from the femlib data cache
    (``pooch.os_cache("femlib")``, or the folder in ``${_ENV_VAR}``) after an MD5 check.

    Parameters
    ----------
    allow_download : bool, default False
        Download the file from Zenodo if it is not cached. It is a large 4D-STEM dataset:
        check its size on https://zenodo.org/records/{_RECORD} first.
    **kwargs
        Passed to :func:`hyperspy.api.load`, e.g. ``lazy=True`` (recommended: the data are then
        read chunk by chunk, from the file opened read-only).

    Returns
    -------
    FEMDiffraction2D or LazyFEMDiffraction2D

    Raises
    ------
    FileNotFoundError
        If the file is not cached and ``allow_download`` is False; the message says where the
        file is expected and how to get it.
    ValueError
        If the cached or the downloaded file fails its checksum.
    ConnectionError
        If the download fails.

    Examples
    --------
    The first call downloads the file (``allow_download=True``); later calls read the cache.
    Without a cached copy and without permission to download, the loader says where the file
    is expected:

    >>> try:
    ...     s = femlib.data.{func}(lazy=True)
    ... except FileNotFoundError as err:
    ...     print(str(err).split(" is not")[0])
    {name} (ZrCuAl metallic glass, Zenodo record {_RECORD})
    """


def zrcual_1(allow_download=False, **kwargs):
    return _load("pos1-1.zspy", allow_download, **kwargs)


def zrcual_2(allow_download=False, **kwargs):
    return _load("pos5-1.zspy", allow_download, **kwargs)


def zrcual_3(allow_download=False, **kwargs):
    return _load("pos6-1.zspy", allow_download, **kwargs)


zrcual_1.__doc__ = _public_doc("pos1-1.zspy", "zrcual_1")
zrcual_2.__doc__ = _public_doc("pos5-1.zspy", "zrcual_2")
zrcual_3.__doc__ = _public_doc("pos6-1.zspy", "zrcual_3")
