"""The uvicorn versions the server's protocol subclasses are known to work with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import uvicorn

from server.operator_errors import OperatorError
from server.web.uvicorn_internals import SUPPORTED, check_version


def test_the_installed_uvicorn_is_supported():
    check_version(uvicorn.__version__)


@pytest.mark.parametrize("version", ["0.54.0", "0.55.0", "0.59.9"])
def test_versions_inside_the_range_pass(version):
    check_version(version)


@pytest.mark.parametrize("version", ["0.53.1", "0.60.0", "1.0.0", "garbage"])
def test_versions_outside_the_range_are_one_operator_error(version):
    with pytest.raises(OperatorError) as e:
        check_version(version)
    assert str(e.value).count("\n") == 0 and f"uvicorn {version} is not supported" in str(e.value)


def test_the_range_is_the_pin_of_pyproject():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    pin = re.search(r'"uvicorn>=(\d+)\.(\d+),<(\d+)\.(\d+)"', pyproject)
    assert pin is not None
    low_major, low_minor, high_major, high_minor = map(int, pin.groups())
    assert SUPPORTED == ((low_major, low_minor), (high_major, high_minor))
