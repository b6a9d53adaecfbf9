"""The compiled extension ``xgenmm_fast._C`` (csrc/), loaded if it was built.

Importing this module never fails: without a build, ``HAS_CPP_EXT`` is False and ``cpp_ext()``
raises ``ExtensionNotBuiltError`` saying how to build it. Callers that have a pure-Python fallback
check ``HAS_CPP_EXT``; the others call ``cpp_ext()``.
"""

from __future__ import annotations

import torch  # noqa: F401  (the extension links against libtorch, which must be loaded first)

BUILD_COMMAND = "pip install --no-build-isolation -e ."

try:
    from xgenmm_fast import _C  # type: ignore[attr-defined]

    HAS_CPP_EXT = True
    _IMPORT_ERROR: BaseException | None = None
except ImportError as exc:  # not built, or built against another torch / Python
    _C = None
    HAS_CPP_EXT = False
    _IMPORT_ERROR = exc


class ExtensionNotBuiltError(RuntimeError):
    """The C++ extension is missing (or lacks a function) and no fallback was asked for."""


def cpp_ext():
    """The ``xgenmm_fast._C`` module, or ExtensionNotBuiltError with the build command."""
    if _C is None:
        raise ExtensionNotBuiltError(
            f"the C++ extension xgenmm_fast._C is not available ({_IMPORT_ERROR}); build it with "
            f"`{BUILD_COMMAND}` in the repository root (torch must be installed first)"
        )
    return _C


def cpp_function(name: str):
    """``xgenmm_fast._C.<name>``; a clear error when the build predates that function."""
    ext = cpp_ext()
    fn = getattr(ext, name, None)
    if fn is None:
        raise ExtensionNotBuiltError(
            f"xgenmm_fast._C has no function {name!r}: the build is older than the sources; "
            f"rebuild with `{BUILD_COMMAND}`"
        )
    return fn
