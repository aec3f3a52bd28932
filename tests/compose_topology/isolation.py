"""Where the topology's names resolve and its fixed ports live.

Two ways, best first:

``netns``  The runner runs in a network and mount namespace of its own (``unshare``): a loopback
           of its own, so the compose file's fixed ports (18000, 19000, 10000, 8080, 8888) and
           Envoy's 0.0.0.0 binds collide with nothing else on the machine, and a hosts file of its
           own, bind-mounted over /etc/hosts for the namespace only: nothing to clean up, even
           after a kill. Needs root, or user namespaces (``unshare --user --map-root-user``).
``hosts``  The runner shares the machine's network: it adds its names to /etc/hosts between
           marker lines carrying its pid, and removes them when it ends (also on SIGTERM/SIGINT;
           blocks left by a runner that was killed are removed by the next one). Needs root and a
           writable /etc/hosts, and the fixed ports free: they are checked first.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

__all__ = [
    "HOSTS",
    "add_hosts_block",
    "choose",
    "enter_netns_inside",
    "hosts_block",
    "netns_prefix",
    "remove_hosts_blocks",
]

HOSTS = Path("/etc/hosts")
_BEGIN = "# >>> labxds compose harness (pid {pid}) >>>"
_END = "# <<< labxds compose harness (pid {pid}) <<<"
_BLOCK = re.compile(r"^# >>> labxds compose harness \(pid (\d+)\) >>>\n.*?^# <<< labxds compose harness \(pid \1\) <<<\n?",
                    re.S | re.M)  # fmt: skip


def hosts_block(entries: list[tuple[str, list[str]]], pid: int) -> str:
    lines = [_BEGIN.format(pid=pid)] + [f"{address}\t{' '.join(names)}" for address, names in entries]
    return "\n".join(lines + [_END.format(pid=pid)]) + "\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rewrite(path: Path, text: str) -> None:
    """In place (/etc/hosts is often a bind mount: it cannot be replaced by a rename)."""
    with path.open("r+") as f:
        f.seek(0)
        f.write(text)
        f.truncate()


def remove_hosts_blocks(path: Path = HOSTS, *, pid: int | None = None) -> int:
    """Remove this pid's block, or (pid=None) every block whose runner is gone. Returns how many."""
    text = path.read_text()
    removed = 0

    def drop(m: re.Match) -> str:
        nonlocal removed
        owner = int(m.group(1))
        if (pid is not None and owner == pid) or (pid is None and not _alive(owner)):
            removed += 1
            return ""
        return m.group(0)

    new = _BLOCK.sub(drop, text)
    if removed:
        _rewrite(path, new)
    return removed


def add_hosts_block(entries: list[tuple[str, list[str]]], path: Path = HOSTS, *, pid: int | None = None) -> None:
    pid = os.getpid() if pid is None else pid
    remove_hosts_blocks(path)  # stale ones, from runners that were killed
    text = path.read_text()
    taken = {name for _, names in entries for name in names}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        clash = taken & set(words[1:])
        if clash:
            raise RuntimeError(f"{path} already maps {sorted(clash)} ({line.strip()!r}): the harness will not shadow it")
    _rewrite(path, text + ("" if text.endswith("\n") or not text else "\n") + hosts_block(entries, pid))


# -- network namespace ------------------------------------------------------------------------


def netns_prefix() -> list[str] | None:
    """The ``unshare`` command line that gives a child its own network and mount namespaces, or
    None when this machine does not allow it."""
    unshare = shutil.which("unshare")
    if not unshare:
        return None
    base = [unshare, "--net", "--mount", "--fork", "--propagation", "private"]
    for prefix in ([*base] if os.geteuid() == 0 else [], [unshare, "--user", "--map-root-user", *base[1:]]):
        if not prefix:
            continue
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None


def _loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                  data.encode() if data else None) != 0:  # fmt: skip
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def netns_id() -> str:
    """This process's network namespace (``net:[inode]``)."""
    return os.readlink("/proc/self/ns/net")


def enter_netns_inside(entries: list[tuple[str, list[str]]], workdir: Path, outside: str) -> None:
    """Run inside the new namespaces: loopback up, our hosts file over /etc/hosts, and a /dev/shm
    of our own (a container has one: Envoy's hot-restart memory must not meet another Envoy's)."""
    if not outside or netns_id() == outside:
        raise RuntimeError("not in a network namespace of its own: refusing to mount over /etc/hosts (run via launch())")
    _loopback_up()
    hosts = workdir / "hosts"
    original = HOSTS.read_text() if HOSTS.exists() else "127.0.0.1 localhost\n"
    hosts.write_text(original.rstrip("\n") + "\n" + hosts_block(entries, os.getpid()))
    ms_bind = 4096
    _mount(str(hosts), str(HOSTS), None, ms_bind, None)
    _mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777")


def choose(wanted: str | None = None) -> tuple[str, str]:
    """('netns'|'hosts', detail) or ('skip', reason). LABXDS_COMPOSE_ISOLATION=netns|hosts forces one."""
    wanted = wanted or os.environ.get("LABXDS_COMPOSE_ISOLATION") or "auto"
    if wanted not in ("auto", "netns", "hosts"):
        return "skip", f"LABXDS_COMPOSE_ISOLATION={wanted!r}: choose netns or hosts"
    if wanted in ("auto", "netns"):
        prefix = netns_prefix()
        if prefix:
            return "netns", " ".join(prefix)
        if wanted == "netns":
            return "skip", "cannot create a network namespace here (unshare --net --mount failed)"
    if os.geteuid() != 0:
        return "skip", "the compose harness needs root (to edit /etc/hosts) or user namespaces (unshare), and has neither"
    if not os.access(HOSTS, os.W_OK):
        return "skip", f"{HOSTS} is not writable"
    return "hosts", str(HOSTS)
