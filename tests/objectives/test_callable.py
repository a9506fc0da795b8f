"""The callable objective: a user's ``module:function``."""

from __future__ import annotations

import pytest

from mergesweep.errors import ConfigError, ObjectiveError
from mergesweep.objectives import build_objective


def _make(function: str, **options):
    return build_objective("low", {"kind": "callable", "function": function, **options})


def test_float_result_and_defaults(callable_module, passthrough) -> None:
    obj = _make(f"{callable_module}:scale")
    assert (obj.metric, obj.direction) == ("scale", "maximize")
    assert obj.evaluate(passthrough) == 2.0
    with __import__("torch").no_grad():
        passthrough.scale.fill_(1.5)
    assert obj.evaluate(passthrough) == 3.0


def test_dict_result_picks_the_metric(callable_module, passthrough) -> None:
    obj = _make(f"{callable_module}:report", metric="task_len", direction="minimize")
    assert (obj.metric, obj.direction) == ("task_len", "minimize")
    assert obj.evaluate(passthrough) == 3.0  # the function is called with task="low"
    assert _make(f"{callable_module}:report", metric="f1").evaluate(passthrough) == 0.25
    with pytest.raises(
        ObjectiveError,
        match=r"objectives\.tasks\.low\.metric: .*returned no "
        r"'report'; choose one of f1, task_len",
    ):
        _make(f"{callable_module}:report").evaluate(passthrough)


def test_non_numeric_result(callable_module, passthrough) -> None:
    with pytest.raises(ObjectiveError, match=r"objectives\.tasks\.low\.function: .* returned str"):
        _make(f"{callable_module}:broken").evaluate(passthrough)


@pytest.mark.parametrize(
    ("function", "match"),
    [
        ("no_colon", r"expected 'package\.module:function', got 'no_colon'"),
        ("a:b:c", r"expected 'package\.module:function'"),
        (
            "surely_not_a_module_xyz:f",
            r"cannot import module 'surely_not_a_module_xyz': "
            r"ModuleNotFoundError",
        ),
        ("{mod}:missing", r"module 'objective_fns' has no attribute 'missing'"),
        ("{mod}:NOT_CALLABLE", r"'objective_fns:NOT_CALLABLE' is not callable"),
    ],
)
def test_import_errors_name_the_function_key(callable_module, function, match) -> None:
    with pytest.raises(ObjectiveError, match=r"^objectives\.tasks\.low\.function: " + match):
        _make(function.format(mod=callable_module))


def test_bad_direction(callable_module) -> None:
    with pytest.raises(
        ConfigError,
        match=r"objectives\.tasks\.low\.direction: expected one of "
        r"maximize, minimize, got 'up'",
    ):
        _make(f"{callable_module}:scale", direction="up")
