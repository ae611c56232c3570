"""Each bad profile and own-data file of tests/bad_inputs.py is refused before any training: exit 2, one message."""

from __future__ import annotations

import pytest
from bad_inputs import CASES, run_case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_with_its_message(tmp_path, case):
    ok, what = run_case(case, tmp_path)
    assert ok, f"{case.name}: expected exit {case.rc} saying {case.says}; got {what}"
