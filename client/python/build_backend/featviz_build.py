"""The PEP 517 build backend of featviz-client, standard library only.

`pip install ./client/python` needs no package index: this backend has no
build requirements, so pip's isolated build environment stays empty. It
generates the gRPC stubs at build time with Debian's `protoc` and
`grpc_python_plugin` (packages protobuf-compiler, protobuf-compiler-grpc; the
pip-installed `grpc_tools.protoc` is used when they are missing), rewrites
their imports so that they live inside the package as `featviz_client.v1`,
and zips the wheel. Nothing generated is ever written into the source tree.

Where the .proto files come from, first match wins: $FEATVIZ_PROTO_DIR (a
folder holding featviz/v1/*.proto and grpc/health/v1/health.proto), the
`proto/` folder of an sdist, or the checkout this folder sits in
(../../proto and ../../tests/server/proto).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent.parent  # client/python
_PROTOS = ["featviz/v1/featviz.proto", "featviz/v1/circuits.proto"]
_HEALTH = "grpc/health/v1/health.proto"
# Generated module -> its import in the stubs, rewritten to the package.
_IMPORT = re.compile(r"^from (featviz\.v1|grpc\.health\.v1) import ", re.MULTILINE)


def _project() -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        raise RuntimeError("building featviz-client needs Python 3.11 (tomllib)") from None
    with open(_HERE / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _dist_name(project: dict) -> str:
    return re.sub(r"[-_.]+", "_", project["name"])


def _metadata(project: dict) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '>=3')}",
    ]
    lines += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {dep}; extra == "{extra}"' for dep in deps]
    readme = _HERE / project.get("readme", "README.md")
    lines.append("Description-Content-Type: text/markdown")
    body = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    return "\n".join(lines) + "\n\n" + body


def _wheel_file() -> str:
    return ("Wheel-Version: 1.0\nGenerator: featviz_build\n"
            "Root-Is-Purelib: true\nTag: py3-none-any\n")


def _proto_roots() -> tuple[Path, Path]:
    """(root of featviz/v1/*.proto, root of grpc/health/v1/health.proto)."""
    candidates = []
    if os.environ.get("FEATVIZ_PROTO_DIR"):
        root = Path(os.environ["FEATVIZ_PROTO_DIR"])
        candidates.append((root, root))
    candidates.append((_HERE / "proto", _HERE / "proto"))
    candidates.append((_HERE.parent.parent / "proto",
                       _HERE.parent.parent / "tests" / "server" / "proto"))
    for featviz_root, health_root in candidates:
        if all((featviz_root / p).is_file() for p in _PROTOS) and \
                (health_root / _HEALTH).is_file():
            return featviz_root, health_root
    raise RuntimeError(
        "featviz-client: no .proto files found; build from a featviz checkout "
        "(client/python inside it) or set FEATVIZ_PROTO_DIR")


def _protoc_command(out: Path, featviz_root: Path, health_root: Path) -> list[str]:
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    sources = [str(featviz_root / p) for p in _PROTOS] + [str(health_root / _HEALTH)]
    paths = [f"--proto_path={featviz_root}", f"--proto_path={health_root}"]
    if protoc and plugin:
        return [protoc, *paths, f"--python_out={out}", f"--grpc_out={out}",
                f"--plugin=protoc-gen-grpc={plugin}", *sources]
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "featviz-client: generating the stubs needs protoc and grpc_python_plugin "
            "(Debian: protobuf-compiler protobuf-compiler-grpc) or grpcio-tools") from None
    return [sys.executable, "-m", "grpc_tools.protoc", *paths,
            f"--python_out={out}", f"--grpc_python_out={out}", *sources]


def _generated_stubs() -> dict[str, bytes]:
    """featviz_client/v1/<module>.py -> contents, imports rewritten."""
    featviz_root, health_root = _proto_roots()
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        subprocess.run(_protoc_command(out, featviz_root, health_root), check=True)
        for folder in (out / "featviz" / "v1", out / "grpc" / "health" / "v1"):
            for path in sorted(folder.glob("*.py")):
                text = _IMPORT.sub("from featviz_client.v1 import ", path.read_text())
                files[f"featviz_client/v1/{path.name}"] = text.encode()
    files["featviz_client/v1/__init__.py"] = (
        b'"""Generated at build time from proto/featviz/v1 and the gRPC health\n'
        b'protocol: featviz_pb2, circuits_pb2, health_pb2 and their _grpc stubs."""\n')
    return files


def _package_sources() -> dict[str, bytes]:
    files = {}
    for path in sorted((_HERE / "featviz_client").rglob("*.py")):
        relative = path.relative_to(_HERE).as_posix()
        # A stray copy of generated stubs in the tree never ships.
        if relative.startswith("featviz_client/v1/") or "__pycache__" in relative:
            continue
        files[relative] = path.read_bytes()
    return files


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"{name},sha256={digest.decode()},{len(data)}"


def _dist_info(project: dict) -> tuple[str, dict[str, bytes]]:
    name = f"{_dist_name(project)}-{project['version']}.dist-info"
    return name, {f"{name}/METADATA": _metadata(project).encode(),
                  f"{name}/WHEEL": _wheel_file().encode()}


# ------------------------------------------------------------ PEP 517 hooks

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name, files = _dist_info(_project())
    for path, data in files.items():
        target = Path(metadata_directory) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = _project()
    files = {**_package_sources(), **_generated_stubs()}
    info_name, info = _dist_info(project)
    files.update(info)
    record_name = f"{info_name}/RECORD"
    record = "\n".join([_record_line(n, d) for n, d in files.items()] +
                       [f"{record_name},,"]) + "\n"
    wheel_name = f"{_dist_name(project)}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / wheel_name, "w",
                         compression=zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files.items():
            wheel.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), data,
                           compress_type=zipfile.ZIP_DEFLATED)
        wheel.writestr(zipfile.ZipInfo(record_name, date_time=(1980, 1, 1, 0, 0, 0)),
                       record.encode(), compress_type=zipfile.ZIP_DEFLATED)
    return wheel_name


def build_sdist(sdist_directory, config_settings=None):
    """A source archive that builds on its own: the .proto files go in proto/."""
    project = _project()
    base = f"{_dist_name(project)}-{project['version']}"
    featviz_root, health_root = _proto_roots()
    entries = {f"{base}/{p}": d for p, d in _package_sources().items()}
    for name in ("pyproject.toml", "README.md", "build_backend/featviz_build.py"):
        entries[f"{base}/{name}"] = (_HERE / name).read_bytes()
    for proto in _PROTOS:
        entries[f"{base}/proto/{proto}"] = (featviz_root / proto).read_bytes()
    entries[f"{base}/proto/{_HEALTH}"] = (health_root / _HEALTH).read_bytes()
    entries[f"{base}/PKG-INFO"] = _metadata(project).encode()
    archive = f"{base}.tar.gz"
    with tarfile.open(Path(sdist_directory) / archive, "w:gz") as tar:
        for path, data in entries.items():
            member = tarfile.TarInfo(path)
            member.size = len(data)
            member.mode = 0o644
            tar.addfile(member, io.BytesIO(data))
    return archive
