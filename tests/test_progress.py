"""ProgressBar: silent off a terminal unless forced; draws fraction, counts and rate."""
from __future__ import annotations

import io

import pytest

from rwkvx.progress import BAR_WIDTH, ProgressBar


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_silent_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("RWKVX_PROGRESS", raising=False)
    stream = io.StringIO()
    with ProgressBar(10, stream=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""
    assert bar.done == 10


def test_draws_on_a_terminal_and_ends_the_line(monkeypatch):
    monkeypatch.delenv("RWKVX_PROGRESS", raising=False)
    stream = FakeTerminal()
    with ProgressBar(4, label="work", unit="tok", stream=stream) as bar:
        bar.update(1)
    text = stream.getvalue()
    assert text.startswith("\rwork [") and text.endswith("\n")
    assert " 1/4 tok " in text and "tok/s" in text


@pytest.mark.parametrize("force, env, shown", [(True, None, True), (False, None, False), (None, "1", True),
                                               (None, "0", False)])
def test_force_and_environment(monkeypatch, force, env, shown):
    if env is None:
        monkeypatch.delenv("RWKVX_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("RWKVX_PROGRESS", env)
    stream = io.StringIO() if force or env == "1" else FakeTerminal()
    with ProgressBar(3, stream=stream, force=force) as bar:
        bar.update(3)
    assert bool(stream.getvalue()) == shown


def test_render_fraction():
    bar = ProgressBar(200, stream=io.StringIO(), force=False)
    bar.update(50)
    line = bar.render()
    assert "[" + "#" * round(BAR_WIDTH / 4) + "." * (BAR_WIDTH - round(BAR_WIDTH / 4)) + "]" in line
    assert "25%" in line and "50/200" in line
    bar.update(500)  # more than the total: the bar stops at 100 %
    assert "100%" in bar.render() and "#" * BAR_WIDTH in bar.render()
