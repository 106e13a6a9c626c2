"""Keep converters' C++ diagnostics (MLIR dumps, absl banners) off the user's terminal.

The same text reaches us in the Python exception, which we turn into one line; `--debug`
(KEXPORT_DEBUG=1) lets it through.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def captured_native_stderr():
    """Redirect file descriptor 2 to a temp file for the duration; yields a callable that
    returns what was written."""
    if os.environ.get("KEXPORT_DEBUG"):
        yield lambda: ""
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: (tmp.seek(0), tmp.read().decode(errors="replace"))[1]
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
