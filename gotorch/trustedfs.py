"""Which paths torch may trust, and opening them without races: the rules of cronie and OpenSSH's StrictModes.

A root daemon runs what its task file says, so whoever can change that file, or rename any directory
on the way to it, can run commands as root. Likewise, whoever can plant a symlink in a directory
where root creates files can make root write anywhere. So, for the task file and the state
directories:

* every directory from `/` down to the file must be owned by root or by the daemon's user, and not
  writable by group or others. A sticky world-writable directory (`/tmp`) is accepted on the way,
  because the sticky bit stops others from renaming or replacing what they do not own, but never
  as the file's own directory (anyone could then create the file before us);
* the path is walked one component at a time through directory descriptors (`openat`), each one
  checked with `fstat` on the descriptor we will use next, so swapping a directory after its check
  (`renameat2(RENAME_EXCHANGE)`) gains nothing;
* a symlink is never followed by the kernel: we read it (it sits in a directory that passed, so only
  a trusted user could have made it) and walk its target with the same checks;
* the file is opened once, `O_NOFOLLOW | O_NONBLOCK` (a FIFO in its place must not block the open),
  `fstat`ed (regular file, owner, mode, the inode we looked at) and read from that same descriptor,
  with a size bound.

Everything here raises `Untrusted` with a message for a person: the path, what is wrong, how to fix it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

# A task file bigger than this is refused before it is read: 10,000 tasks are about 1 MB, and a
# 50 MB file took the daemon 22 s and 2.4 GB to reject.
MAX_TASK_FILE = 10 * 1024 * 1024
MAX_SYMLINKS = 40  # as Linux's own limit on nested links

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Untrusted(Exception):
    """A path torch must not use; `problem` and `hint` are for the person who can fix it."""

    def __init__(self, path: str, problem: str, hint: str = "") -> None:
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))
        self.path = path
        self.problem = problem
        self.hint = hint

    def problem_for(self, file: str) -> str:
        """The problem as said about `file`: naming the directory or link concerned when it is not `file`."""
        return self.problem if self.path == file else f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class FileBytes:
    """What `read_file` read, and the `fstat` of the descriptor it was read from."""

    data: bytes
    st: os.stat_result
    real_path: str  # every symlink on the way resolved


def kind_of(mode: int) -> str:
    """A person's word for the file type in `mode`."""
    for test, word in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return word
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def owners(euid: int) -> tuple[int, ...]:
    """Uids whose files and directories a daemon running as `euid` may trust."""
    return (0,) if euid == 0 else (0, euid)


def _who(euid: int) -> str:
    return "root" if euid == 0 else f"root or uid {euid}"


def check_dir(st: os.stat_result, path: str, euid: int, *, own_dir: bool) -> None:
    """Raise Untrusted unless the directory `st` (at `path`) is safe as a step towards a trusted file."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in owners(euid):
        raise Untrusted(path, f"directory owned by uid {st.st_uid}, not {_who(euid)}: that user could replace "
                              "what torch reads or writes below it",
                        f"chown root {path}, or move torch's files to a directory root controls")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        if not own_dir and mode & stat.S_ISVTX:
            return  # sticky (like /tmp): others cannot rename or replace entries they do not own
        raise Untrusted(path, f"directory is {_writable(mode)} (mode {mode:04o})", f"chmod {_fix(mode)} {path}")


def check_file(st: os.stat_result, path: str, euid: int) -> None:
    """Raise Untrusted unless `st` is a regular file owned by a trusted uid and writable only by it."""
    if not stat.S_ISREG(st.st_mode):
        raise Untrusted(path, f"is {kind_of(st.st_mode)}, not a regular file", "point torch at a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in owners(euid):
        raise Untrusted(path, f"owned by uid {st.st_uid}, not {_who(euid)}: a root daemon runs only files "
                              "root controls", f"chown root {path}")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Untrusted(path, f"is {_writable(mode)} (mode {mode:04o})", f"chmod {_fix(mode)} {path}")


def _writable(mode: int) -> str:
    both = mode & stat.S_IWGRP and mode & stat.S_IWOTH
    return "group-writable and writable by others" if both else (
        "group-writable" if mode & stat.S_IWGRP else "writable by others")


def _fix(mode: int) -> str:
    return "go-w" if mode & stat.S_IWGRP and mode & stat.S_IWOTH else ("g-w" if mode & stat.S_IWGRP else "o-w")


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


class _Walk:
    """Directory descriptors from `/` down to one directory, each checked when opened."""

    def __init__(self, euid: int, check: bool) -> None:
        self.euid = euid
        self.check = check
        self.stack: list[tuple[int, str, os.stat_result]] = []
        self.hops = 0
        self._root()

    def _root(self) -> None:
        fd = os.open("/", _DIR_FLAGS)
        st = os.fstat(fd)
        if self.check:
            try:
                check_dir(st, "/", self.euid, own_dir=False)  # a chroot's / may be anything
            except BaseException:
                os.close(fd)
                raise
        self.stack.append((fd, "/", st))

    @property
    def fd(self) -> int:
        return self.stack[-1][0]

    @property
    def path(self) -> str:
        return self.stack[-1][1]

    def close(self) -> None:
        for fd, _, _ in self.stack:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.stack.clear()

    def up(self) -> None:
        if len(self.stack) > 1:
            os.close(self.stack.pop()[0])

    def restart_at_root(self) -> None:
        self.close()
        self._root()

    def link(self, name: str, components: list[str], st: os.stat_result) -> None:
        """Replace `name` (a symlink in the current directory, lstat `st`) by its target's components."""
        self.hops += 1
        where = _join(self.path, name)
        if self.hops > MAX_SYMLINKS:
            raise Untrusted(where, "too many levels of symbolic links", "point torch at the real file")
        target = read_link(self.fd, name, st, where, self.euid, self.check)
        if target.startswith("/"):
            self.restart_at_root()
        components[:0] = target.split("/")

    def enter(self, name: str, *, create_mode: int | None = None) -> None:
        """Open the subdirectory `name` of the current directory (creating it if asked) and check it."""
        created = False
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            if create_mode is None:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, create_mode, dir_fd=self.fd)
                created = True
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        path = _join(self.path, name)
        try:
            if created:
                os.fchmod(fd, create_mode or 0o750)  # exactly this mode, whatever the umask
            st = os.fstat(fd)
            if self.check:
                check_dir(st, path, self.euid, own_dir=False)
        except BaseException:
            os.close(fd)
            raise
        self.stack.append((fd, path, st))

    def check_own_dir(self) -> None:
        """The directory that holds the file itself gets no sticky-bit exemption."""
        if self.check:
            _, path, st = self.stack[-1]
            check_dir(st, path, self.euid, own_dir=True)


def read_link(dir_fd: int, name: str, st: os.stat_result, where: str, euid: int, check: bool) -> str:
    """The target of the symlink `name`, if a trusted user made it.

    Anyone may create a name in a sticky directory such as /tmp: a link there is followed only if
    it belongs to a trusted uid, the rule of the kernel's fs.protected_symlinks (which does not
    apply here, since we resolve links ourselves).
    """
    if check and st.st_uid not in owners(euid):
        raise Untrusted(where, f"is a symlink owned by uid {st.st_uid}, not {_who(euid)}",
                        "remove it, or point torch at the real path")
    return os.readlink(name, dir_fd=dir_fd)


def _components(path: str) -> list[str]:
    if not path.startswith("/"):
        raise Untrusted(path, "is not an absolute path", "give the full path, starting with /")
    return [c for c in path.split("/") if c not in ("", ".")]


def _walk_to_parent(path: str, euid: int, check: bool, create_mode: int | None = None,
                    *, into: bool = False, follow_final: bool = True) -> tuple[_Walk, str]:
    """Walk to the directory holding `path`'s final component; return the walk and that component's name.

    Symlinks in the middle of the path are resolved by reading them; the final component is left to
    the caller (it may itself be a symlink, see `read_file`). With `into`, the final component is
    walked into as a directory too, and the name returned is "".
    """
    walk = _Walk(euid, check)
    try:
        parts = _components(path)
        if not parts and not into:
            raise Untrusted(path, "is the root directory", "give a file's path")
        while len(parts) > (0 if into else 1):
            name = parts.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                walk.up()
                continue
            try:
                st = os.stat(name, dir_fd=walk.fd, follow_symlinks=False)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                walk.enter(name, create_mode=create_mode)
                continue
            if stat.S_ISLNK(st.st_mode):
                if not parts and not follow_final:  # the path's own last component (see ensure_dir)
                    where = _join(walk.path, name)
                    raise Untrusted(where, "is a symlink, and torch never writes through one",
                                    f"remove {where} (torch recreates it)")
                walk.link(name, parts, st)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise Untrusted(_join(walk.path, name), f"is {kind_of(st.st_mode)}, not a directory")
            walk.enter(name)
        return walk, (parts[0] if parts else "")
    except BaseException:
        walk.close()
        raise


def read_file(path: str, euid: int, *, check: bool = True, limit: int = MAX_TASK_FILE) -> FileBytes:
    """Read the file at absolute `path` as a daemon running as `euid` may trust it (see the module doc).

    `check=False` skips the ownership and mode rules (for commands that only display a file) but keeps
    the rest: no blocking open, regular files only, at most `limit` bytes. Raises Untrusted, or
    OSError (e.g. FileNotFoundError) when the file cannot be read at all.
    """
    walk, name = _walk_to_parent(path, euid, check)
    hops = 0
    try:
        while True:
            if name in ("", ".", ".."):
                raise Untrusted(path, "names a directory, not a file", "give the task file's path")
            st = os.stat(name, dir_fd=walk.fd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                break
            # A final symlink (/etc/torch/tasks.yaml -> /srv/tasks/tasks.yaml) is followed only by
            # walking its target, so the target's directories pass the same checks. The link itself
            # sits in a directory that passed, so only a trusted user could have made it.
            hops += 1
            if hops > MAX_SYMLINKS:
                raise Untrusted(path, "too many levels of symbolic links", "point torch at the real file")
            target = read_link(walk.fd, name, st, _join(walk.path, name), euid, check)
            target = target if target.startswith("/") else _join(walk.path, target)
            walk.close()
            walk, name = _walk_to_parent(target, euid, check)
        where = _join(walk.path, name)
        walk.check_own_dir()
        if not stat.S_ISREG(st.st_mode):
            # Refuse before opening: opening a device or FIFO can block or have side effects.
            raise Untrusted(where, f"is {kind_of(st.st_mode)}, not a regular file", "point torch at a regular file")
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=walk.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Untrusted(where, "was replaced by a symlink while being opened", "try again") from None
            raise
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                raise Untrusted(where, "was replaced while being opened", "try again")
            if check:
                check_file(fst, where, euid)
            elif not stat.S_ISREG(fst.st_mode):
                raise Untrusted(where, f"is {kind_of(fst.st_mode)}, not a regular file")
            return FileBytes(_read_bounded(fd, where, limit, fst.st_size), fst, where)
        finally:
            os.close(fd)
    finally:
        walk.close()


def _read_bounded(fd: int, where: str, limit: int, size: int) -> bytes:
    too_big = Untrusted(where, f"is larger than the {limit // (1024 * 1024)} MiB limit for a task file",
                        "split it, or remove what is not tasks; 10,000 tasks are about 1 MiB")
    if size > limit:
        raise too_big
    return read_bounded(fd, limit, too_big)


def read_bounded(fd: int, limit: int, too_big: Exception) -> bytes:
    """Read `fd` to its end, raising `too_big` past `limit` bytes (the file may grow after its fstat)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise too_big


def ensure_dir(path: str, euid: int, mode: int = 0o750, *, follow_final: bool = True) -> None:
    """Make sure the directory `path` exists and is trusted from `/` down, creating what is missing.

    Directories torch creates get exactly `mode` (the umask does not loosen or tighten it). An
    existing directory that another user could write, or that is owned by another user, is refused
    rather than fixed: it was not ours, and we cannot know what was planted in it.

    `follow_final=False` is for torch's own directories inside a state directory (STATE/hooks): a
    symlink in their place is refused rather than walked, since nobody but torch has a reason to
    put one there, and walking it would create the directory, and files in it, wherever it points.
    A state directory itself may be a symlink its owner made (`/var/lib/torch -> /srv/torch`).
    """
    walk, _ = _walk_to_parent(path, euid, True, create_mode=mode, into=True, follow_final=follow_final)
    try:
        walk.check_own_dir()
    finally:
        walk.close()


class SymlinkRefused(OSError):
    """A symlink sits where torch opens one of its own files: refused, never followed.

    An OSError (ELOOP, what O_NOFOLLOW reports) so that callers handling "cannot open" handle it
    too; its message says what to do rather than the kernel's "Too many levels of symbolic links".
    """

    def __init__(self, path: str) -> None:
        super().__init__(errno.ELOOP, "is a symlink", path)

    def __str__(self) -> str:
        return f"{self.filename}: is a symlink, and torch never writes through one; remove it (torch recreates it)"


def open_state_file(path: str, flags: int, mode: int = 0o640) -> int:
    """Open (or create) one of torch's own files in a trusted directory, never through a symlink.

    The descriptor is `fstat`ed before it is returned: it must be a regular file owned by us with a
    single link (a hard link planted earlier would point root's writes at someone else's file). A
    symlink in the file's place, dangling or not, raises SymlinkRefused.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkRefused(path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted(path, f"is {kind_of(st.st_mode)}, not a regular file", f"remove {path}")
        if st.st_uid != os.geteuid():
            raise Untrusted(path, f"is owned by uid {st.st_uid}, not torch's uid {os.geteuid()}",
                            f"remove {path} (torch recreates it)")
        if st.st_nlink != 1:
            raise Untrusted(path, f"has {st.st_nlink} hard links", f"remove {path} (torch recreates it)")
        if flags & os.O_NONBLOCK == 0:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
