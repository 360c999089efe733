"""Runs a command in the sandbox a systemd unit asks for, as far as it can be had without systemd.

    /usr/bin/python3 tests/systemd_sandbox.py UNIT COMMAND...

From UNIT it takes `NoNewPrivileges=`, `MemoryDenyWriteExecute=` (the kernel's `PR_SET_MDWE`,
which is what systemd itself uses where the kernel has it), `SystemCallFilter=` (allow lists and
`~` deny lists of syscalls and `@groups`, expanded by `systemd-analyze syscall-filter`),
`SystemCallErrorNumber=` and `RestrictAddressFamilies=`, installs them in this process, then
replaces it with COMMAND, which inherits them all. tests/test_deploy.py runs it inside a mount
namespace with a read-only root and a private /tmp, and without capabilities, to check that
callbox works in deploy/callbox.service's sandbox.

It needs libseccomp's Python binding (Debian's python3-seccomp), hence the system interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import seccomp  # type: ignore[import-not-found]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
FAMILIES = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}
HIGHEST_FAMILY = 45
"""AF_MAX of Linux 6: socket() with any family up to it but the allowed ones is refused."""


def settings(unit: Path) -> dict[str, list[str]]:
    """Each `Name=value` of the unit's [Service] section, every value in order."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found.setdefault(name, []).append(value)
    return found


def syscalls(names: list[str]) -> set[str]:
    """The syscalls `names` (syscalls and `@groups`) stand for."""
    expanded: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            expanded.add(name)
            continue
        listing = subprocess.run(
            ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
        ).stdout.splitlines()[1:]
        members = [entry.strip() for entry in listing]
        expanded |= syscalls([entry for entry in members if entry and not entry.startswith("#")])
    return expanded


def allowed_syscalls(filters: list[str]) -> set[str]:
    """systemd's rule: the allow lists add up, then every `~` list is taken away."""
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in filters:
        if value.startswith("~"):
            denied |= syscalls(value[1:].split())
        else:
            allowed |= syscalls(value.split())
    return allowed - denied


def install(unit: Path) -> None:
    found = settings(unit)
    libc = ctypes.CDLL(None, use_errno=True)
    if found.get("NoNewPrivileges") == ["yes"] and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if found.get("MemoryDenyWriteExecute") == ["yes"] and libc.prctl(
        PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0
    ):
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")
    refusal = getattr(errno, found.get("SystemCallErrorNumber", ["EPERM"])[-1])
    rules = seccomp.SyscallFilter(defaction=seccomp.ERRNO(refusal))
    families = [
        FAMILIES[name] for value in found["RestrictAddressFamilies"] for name in value.split()
    ]
    for name in sorted(allowed_syscalls(found["SystemCallFilter"]) - {"socket"}):
        # A syscall this architecture or libseccomp does not have is refused: skip it.
        with contextlib.suppress(RuntimeError, ValueError):
            rules.add_rule(seccomp.ALLOW, name)
    for family in range(HIGHEST_FAMILY + 1):
        action = seccomp.ALLOW if family in families else seccomp.ERRNO(errno.EAFNOSUPPORT)
        rules.add_rule(action, "socket", seccomp.Arg(0, seccomp.EQ, family))
    rules.load()


def main(argv: list[str]) -> None:
    unit, *command = argv
    install(Path(unit))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
