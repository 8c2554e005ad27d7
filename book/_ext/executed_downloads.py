"""The book's "download .ipynb" button serves the executed notebook (with its outputs), not the bare source.

Jupyter Book 1 copies each page's source into ``_build/html/_sources/``: for a notebook that is the stored file,
which this repository keeps without outputs (the build executes it). After the build, this extension replaces
each such copy with myst-nb's executed notebook from ``_build/jupyter_execute/`` (same relative path), so a
reader who downloads a chapter gets the figures and tables they just read. Notebooks that are not executed (the
GPU chapter) keep their stored outputs.
"""
from __future__ import annotations

import shutil
from pathlib import Path


def _copy_executed(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    executed = Path(app.outdir).parent / "jupyter_execute"
    sources = Path(app.outdir) / "_sources"
    for notebook in executed.rglob("*.ipynb"):
        target = sources / notebook.relative_to(executed)
        if target.exists():
            shutil.copyfile(notebook, target)


def setup(app):
    app.connect("build-finished", _copy_executed)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
