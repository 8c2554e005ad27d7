"""Atomic file writes: an artifact is either complete or absent, never half-written."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from pathlib import Path


def _create_temp(path: Path) -> tuple[str, int]:
    """Create an empty, unique temporary file beside ``path`` with the mode a plain ``open(path, "w")`` gives;
    return its name and that mode.

    ``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and writers that open an existing
    file (pyarrow, matplotlib, ``Path.write_text``) keep that mode, so every artifact came out readable by its
    owner only. Here the file is created with ``0o666`` and the kernel applies the umask (and a directory's
    default ACL), exactly as for a normal write: 0644 under umask 022, 0600 under 077.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            return str(tmp), stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(f"could not create a temporary file beside {path} (100 names taken); delete the stale "
                          f".{path.name}.*.tmp files there")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The artifact is complete or absent, never half-written: a block that raises leaves ``path`` as it was (absent,
    or its previous content) and removes the temporary file. The file gets the permissions of a normal write
    (``0o666`` less the umask), not ``mkstemp``'s owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _create_temp(path)
    try:
        yield tmp
        # Some writers replace the file they are given with their own (safetensors writes 0600): put the mode of
        # a normal write back before the rename.
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | Path, data) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
    return Path(path)


class CorruptArtifactError(RuntimeError):
    """A recorded artifact is missing or differs from its recorded hash: it is never silently reused."""


def file_hash(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def environment() -> dict:
    """Versions of the packages a result depends on, and the machine's torch threads."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for name in ("manu-lite", "torch", "transformers", "tokenizers", "rouge-score", "pyarrow", "pillow"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "torch_threads": torch.get_num_threads()}


class RunManifest:
    """``manifest.json`` of a run directory: settings, versions, and each completed step with its files' hashes.

    With ``resume=True`` a step recorded as done is skipped, after checking that its files still hash to the
    recorded values (else :class:`CorruptArtifactError`); resuming with different settings is refused. Without
    ``resume`` the run starts over. The manifest is rewritten atomically after every step.
    """

    def __init__(self, out: str | Path, settings: dict, resume: bool = False):
        self.out = Path(out)
        self.path = self.out / "manifest.json"
        self.settings = json.loads(json.dumps(settings, default=str))
        previous = None
        if resume and self.path.exists():
            try:
                previous = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise CorruptArtifactError(f"{self.path} is not valid JSON ({exc}); delete the run directory or "
                                           "rerun without --resume") from exc
            if previous.get("settings") != self.settings:
                raise ValueError(f"--resume: {self.out} was started with other settings "
                                 f"({previous.get('settings')}); rerun with the same options or without --resume")
        self.data = previous or {"settings": self.settings, "environment": environment(), "steps": {}}
        if previous is None:
            write_json(self.path, self.data)

    def done(self, step: str) -> bool:
        """Whether ``step`` completed earlier; raises when its recorded files are missing or changed."""
        record = self.data["steps"].get(step)
        if record is None:
            return False
        for name, digest in record["files"].items():
            path = self.out / name
            if not path.exists():
                raise CorruptArtifactError(f"step {step!r}: {path} is missing; delete the run directory or rerun "
                                           "without --resume")
            if file_hash(path) != digest:
                raise CorruptArtifactError(f"step {step!r}: {path} changed since it was written (hash mismatch); "
                                           "delete it or rerun without --resume")
        return True

    def complete(self, step: str, files=(), **info) -> None:
        """Record ``step`` as done with the hashes of ``files`` (paths inside the run directory)."""
        hashes = {str(Path(f).relative_to(self.out)): file_hash(f) for f in files}
        self.data["steps"][step] = {"files": hashes, **info}
        write_json(self.path, self.data)
