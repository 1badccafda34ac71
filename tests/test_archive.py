"""pack/verify: reproducible archives, and hostile archives refused before extraction."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pytest

from edgepack.bundle import archive
from edgepack.bundle import folder as bundle
from edgepack.errors import InputError


@pytest.fixture
def onnx_bundle(digits_dist) -> Path:
    out, proc = digits_dist
    assert proc.returncode == 0
    return out / "digits-onnx-cpu-fp32"


def test_pack_is_reproducible_and_verifies(onnx_bundle, tmp_path):
    a = archive.pack(onnx_bundle, tmp_path / "a.tar.gz")
    b = archive.pack(onnx_bundle, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    assert archive.verify(a) == []
    with tarfile.open(a) as tar:
        names = tar.getnames()
    assert "digits-onnx-cpu-fp32/manifest.json" in names
    assert "digits-onnx-cpu-fp32/model.onnx" in names


def test_verify_lists_what_differs(onnx_bundle, tmp_path):
    import shutil

    copy = tmp_path / onnx_bundle.name
    shutil.copytree(onnx_bundle, copy)
    (copy / "bench.py").write_text("print('changed')\n")
    (copy / "extra.bin").write_bytes(b"x")
    (copy / "reference" / "outputs.npz").unlink()
    problems = bundle.verify(copy)
    assert any(p.startswith("bench.py: ") for p in problems)
    assert "reference/outputs.npz: missing" in problems
    assert "extra.bin: not listed in the manifest" in problems
    assert len(problems) == 3


def _tar(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("make, why", [
    (lambda root: tarfile.TarInfo("../evil"), "'..' component"),
    (lambda root: tarfile.TarInfo(f"{root}/evil"), "absolute path"),
    (lambda root: _link("b/link", "../../evil", tarfile.SYMTYPE), "link pointing outside"),
    (lambda root: _link("b/hard", f"{root}/evil", tarfile.LNKTYPE), "link pointing outside"),
    (lambda root: _dev("b/dev"), "device file"),
])
def test_hostile_archives_are_refused(tmp_path, monkeypatch, make, why):
    """Refused before anything is extracted: verify extracts into a temporary folder
    under ROOT (tempfile's dir, pointed here), where '../evil' and the links would land."""
    root = tmp_path / "tmproot"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    extracted = []
    real_extractall = tarfile.TarFile.extractall

    def spy(self, *args, **kwargs):
        extracted.append(args or kwargs)
        return real_extractall(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extractall", spy)
    member = make(root)
    if member.isfile():
        member.size = 1
    path = _tar(tmp_path, member)
    with pytest.raises(InputError, match=why):
        archive.verify(path)
    assert extracted == []
    assert list(root.iterdir()) == []  # no evil, and the temporary folder is gone
    # the same spy sees a benign archive extracted into ROOT, and ROOT cleaned after
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.txt").write_text("a")
    benign = tmp_path / "ok.tar.gz"
    with tarfile.open(benign, "w:gz") as tar:
        tar.add(tmp_path / "ok", arcname="ok")
    with pytest.raises(InputError, match="holds no bundles"):  # extracted, then looked at
        archive.verify(benign)
    assert len(extracted) == 1 and extracted[0][0].startswith(str(root / "edgepack-verify-"))
    assert list(root.iterdir()) == []


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _dev(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


def test_random_bytes_are_not_an_archive(tmp_path):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"not a tar at all" * 10)
    with pytest.raises(InputError, match="not a readable tar archive"):
        archive.verify(path)
