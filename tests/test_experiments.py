"""manu_lite.experiments: explorers show a static figure always and a widget only in a live session; figures are PNGs."""
from __future__ import annotations

import pandas as pd
import pytest

from manu_lite import experiments, profiles


def _summary(share: float) -> dict:
    per_site = {"vision.0.fc2": {"selected": int(128 * share), "of": 128},
                "language.0.down_proj": {"selected": int(256 * share), "of": 256}}
    return {"per_site": per_site}


@pytest.fixture
def sweep():
    rows = []
    for alpha in (0.0, 5.0, 20.0):
        for set_name in ("forget", "retain"):
            for rendering in ("image_text", "text_only"):
                for task in ("mc", "generation", "cloze"):
                    drop = alpha / (50 if set_name == "forget" else 200)
                    rows.append({"alpha": alpha, "set": set_name, "rendering": rendering, "task": task,
                                 "value": 1.0 - drop, "n": 10})
    return experiments.Sweep(pd.DataFrame(rows), {5.0: _summary(0.05), 20.0: _summary(0.2)}, {})


@pytest.fixture
def displayed(monkeypatch):
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    return shown


def test_static_session_shows_one_png_and_no_widget(sweep, displayed, monkeypatch):
    monkeypatch.setenv("MANU_LITE_STATIC", "1")
    assert profiles.interactive() is False
    experiments.alpha_explorer(sweep)
    assert len(displayed) == 1 and type(displayed[0]).__name__ == "Image"
    assert displayed[0].data[:8] == b"\x89PNG\r\n\x1a\n"


def test_live_session_adds_a_slider_below_the_static_figure(sweep, displayed, monkeypatch):
    monkeypatch.setenv("MANU_LITE_STATIC", "0")
    experiments.alpha_explorer(sweep)
    assert type(displayed[0]).__name__ == "Image"
    box = displayed[-1]
    assert type(box).__name__ == "VBox"
    slider = box.children[0]
    assert list(slider.options) == [5.0, 20.0]
    slider.value = 20.0  # redraws without error


def test_plain_python_is_not_interactive(monkeypatch):
    monkeypatch.delenv("MANU_LITE_STATIC", raising=False)
    assert profiles.interactive() is False


class _Kernel:
    kernel = object()


@pytest.mark.parametrize("env, expected", [({}, False), ({"JPY_SESSION_NAME": "/home/me/04.ipynb"}, True),
                                           ({"VSCODE_PID": "4242"}, True),
                                           ({"JPY_SESSION_NAME": "x.ipynb", "MANU_LITE_STATIC": "1"}, False)])
def test_a_kernel_is_live_only_under_a_front_end(monkeypatch, env, expected):
    """A kernel that nbclient/papermill started (no server variables) is not live; one a Jupyter server or VS Code
    started is; MANU_LITE_STATIC=1 (the book build) always wins."""
    import IPython

    for name in ("JPY_SESSION_NAME", "VSCODE_PID", "MANU_LITE_STATIC"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(IPython, "get_ipython", lambda: _Kernel())
    assert profiles.interactive() is expected


def test_sweep_drops_are_points_from_vanilla(sweep):
    drops = sweep.drops()
    assert list(drops.index) == [5.0, 20.0]
    assert drops.loc[20.0, ("forget", "image_text")] == pytest.approx(40.0)
    assert drops.loc[20.0, ("retain", "text_only")] == pytest.approx(10.0)


def test_heatmap_explorer_static(displayed, monkeypatch):
    monkeypatch.setenv("MANU_LITE_STATIC", "1")
    experiments.heatmap_explorer({"paper / union": {5.0: _summary(0.05), 20.0: _summary(0.2)},
                              "reference / union": {5.0: _summary(0.1), 20.0: _summary(0.3)}})
    assert len(displayed) == 1
