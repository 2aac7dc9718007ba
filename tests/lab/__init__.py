"""Test and demo tooling for cspd: a QEMU guest with the real kernel storage stack.

This package is not part of the daemon and is never installed with it. It builds
a Debian bookworm disk image (LVM thin provisioning, the LIO iSCSI target,
open-iscsi and multipath), boots it under QEMU with user-mode networking
(``restrict=on``, every forwarded port bound to 127.0.0.1), installs the working
tree of cspd into it and runs commands in it over SSH.

Entry points:

* ``python3 -m tests.lab up`` starts a lab for a person and prints the API URL,
  the credentials and the stop command (``python3 -m tests.lab down``).
* ``tests/lab/conftest.py`` provides the ``lab`` and ``lab_cspd`` pytest
  fixtures for tests marked ``@pytest.mark.lab``.

``tests/lab/README.md`` describes the cache, the timings and the guest layout.
"""

from .errors import GuestCommandError, LabError, LabUnavailableError
from .lab import Lab

__all__ = ["GuestCommandError", "Lab", "LabError", "LabUnavailableError"]
