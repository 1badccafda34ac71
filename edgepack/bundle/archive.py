"""Bundle archives: ``edgepack pack`` writes a reproducible .tar.gz, ``edgepack
verify`` checks one without trusting it.

A hostile archive must not write outside its folder: members with absolute
paths, ``..`` components, links (hard or symbolic) that point outside, and
device files or FIFOs are refused before anything is extracted.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
import tempfile
from pathlib import Path

from edgepack.bundle import folder as bd
from edgepack.bundle import manifest as mf
from edgepack.errors import InputError


def pack(folder: Path, archive: Path) -> Path:
    """Write BUNDLE as a .tar.gz whose bytes depend only on the bundle's content."""
    mf.read(folder)  # refuse to pack something that is not a bundle
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in bd.files_of(folder):
            info = tarfile.TarInfo(f"{folder.name}/{rel}")
            data = (folder / rel).read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    archive.parent.mkdir(parents=True, exist_ok=True)
    with open(archive, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                   filename="") as gz:
        gz.write(buf.getvalue())
    return archive


def _unsafe(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "a '..' component"
    if member.isdev() or member.isfifo():
        return "a device file or FIFO"
    if member.issym() or member.islnk():
        target = member.linkname
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved.startswith(".."):
            return f"a link pointing outside ({target})"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "an unsupported member type"
    return None


def safe_members(tar: tarfile.TarFile, where: str) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        why = _unsafe(m)
        if why:
            raise InputError(f"{where}: refusing member {m.name!r}: {why}")
    return members


def verify_archive(archive: Path) -> list[str]:
    """Problems found in the bundle(s) inside a .tar.gz (empty = intact)."""
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{archive} is not a readable tar archive: {e}") from None
    with tar, tempfile.TemporaryDirectory(prefix="edgepack-verify-") as tmp:
        members = safe_members(tar, str(archive))
        try:
            tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise InputError(f"{archive}: cannot extract: {e}") from None
        bundles = bd.find_bundles([Path(tmp)])
        problems = []
        for b in bundles:
            problems += [f"{b.name}: {p}" for p in bd.verify(b)]
        return problems


def verify(path: Path) -> list[str]:
    """A bundle folder, a dist folder or a .tar.gz archive."""
    if path.is_file():
        return verify_archive(path)
    problems = []
    for b in bd.find_bundles([path]):
        problems += [f"{b.name}: {p}" for p in bd.verify(b)]
    return problems
