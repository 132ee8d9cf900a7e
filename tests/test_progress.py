"""fxforge.progress: bars only on a terminal and never with FXFORGE_QUIET=1; FXFORGE_LOGS turns on the
logs of the named parts (and refuses names it does not know)."""

from __future__ import annotations

import io
import sys

import pytest
import torch

import fxforge
from fxforge.errors import ConfigError
from fxforge.passes.calibrate import calibrate
from fxforge.progress import LOGS, configure_logging, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv("FXFORGE_QUIET", raising=False)
    items = [1, 2, 3]
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress(items, "x") is items  # not a TTY: the iterable itself
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = progress(items, "calibration")
    assert bar is not items and list(bar) == items
    assert "fxforge: calibration" in term.getvalue()
    monkeypatch.setenv("FXFORGE_QUIET", "1")
    assert progress(items, "x") is items


def test_calibration_shows_a_bar_on_a_terminal(monkeypatch):
    monkeypatch.delenv("FXFORGE_QUIET", raising=False)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    compiled = fxforge.compile_aot(model, (torch.randn(2, 8),))
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    calibrate(compiled.graph, [[torch.randn(2, 8)] for _ in range(3)])
    assert "fxforge: calibration" in term.getvalue() and "/3 " in term.getvalue()  # a bar over the 3 inputs


def test_fxforge_logs_enables_the_named_parts(monkeypatch, capsys):
    monkeypatch.setenv("FXFORGE_LOGS", "passes, codegen")
    try:
        assert configure_logging() == [LOGS["passes"], LOGS["codegen"]]
        fxforge.compile_aot(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), (torch.randn(2, 8),),
                            executor="interpret")
        err = capsys.readouterr().err
        assert "[fxforge.passes.manager] canonicalize:" in err and "ops," in err
        assert "[fxforge.codegen.module] graph" in err and "kernel launches" in err
        configure_logging("")
        fxforge.compile_aot(torch.nn.Sequential(torch.nn.Linear(8, 8)), (torch.randn(2, 8),))
        assert "[fxforge." not in capsys.readouterr().err
    finally:
        configure_logging("")


def test_unknown_log_name_is_one_clear_error():
    with pytest.raises(ConfigError, match="'passses'.*passes"):
        configure_logging("passses")
