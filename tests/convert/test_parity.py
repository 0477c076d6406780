"""The parity gate's comparison (`compare`, `Check`): what passes and what fails, on hand-computed numbers.

These are the gate's arithmetic alone, fast and framework-free; that a real build fails the gate end to end
is tested in tests/convert/test_build.py.
`make mutation` uses them as the referee for convert/parity.py's comparison."""

from __future__ import annotations

import numpy as np
import pytest

from convert.parity import Check, compare
from convert.precision import Precision

TOL = 1e-5
INT8 = Precision("int8", 0.99)


def probs(*rows):
    return np.array(rows, dtype=np.float64)


@pytest.mark.parametrize(("got", "want", "max_diff", "worst", "mismatches", "passed"), [
    ([[0.25, 0.25, 0.5], [0.5, 0.375, 0.125]], [[0.25, 0.25, 0.5], [0.5, 0.375, 0.125]], 0.0, 0, 0, True),
    # a difference exactly at the tolerance passes; the worst row is the one with the largest difference
    ([[0.2, 0.3, 0.5], [0.6, 0.3 + 1e-5, 0.1]], [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], 1e-5, 1, 0, True),
    ([[0.2, 0.3, 0.5], [0.6 - 2e-5, 0.3, 0.1]], [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], 2e-5, 1, 0, False),
    # a flipped label fails though every probability is within tolerance
    ([[0.4, 0.2, 0.4 + 4e-6]], [[0.4 + 4e-6, 0.2, 0.4]], 4e-6, 0, 1, False),
    # NaN anywhere is an infinite difference
    ([[0.5, 0.5, 0.0], [np.nan, 0.5, 0.5]], [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], np.inf, 1, 1, False),
    ([[0.0, 0.5, np.inf]], [[0.0, 0.5, 0.5]], np.inf, 0, 1, False),
])
def test_compare_gates_on_the_largest_difference_and_every_label(got, want, max_diff, worst, mismatches, passed):
    got32 = np.array(got, dtype=np.float32)
    index = np.arange(10, 10 + len(got32))  # the rows' positions in the parity set
    check = compare("ensemble", "probabilities", 7, got32, np.array(want), index)
    assert check.max_abs_diff == pytest.approx(max_diff, rel=1e-3, abs=1e-7)
    assert check.worst_row == 10 + worst and check.label_mismatches == mismatches
    assert check.passed == passed and check.rows == len(got32) and check.batch_size == 7
    assert (check.target, check.output, check.tolerance, check.min_agreement) == ("ensemble", "probabilities", TOL, 1.0)
    assert check.as_dict()["passed"] is passed and check.as_dict()["label_mismatches"] == mismatches


def test_compare_without_labels_and_for_three_dimensional_outputs():
    got = np.zeros((2, 4, 3), dtype=np.float32)
    want = np.zeros((2, 4, 3))
    want[1, 3, 0] = 3e-5
    want[1, 2, 2] = 1.0  # a different argmax, but labels are not asked for
    check = compare("ensemble", "member_probabilities", 1, got, want, np.array([5, 9]), labels=False)
    assert check.worst_row == 9 and check.max_abs_diff == pytest.approx(1.0) and check.label_mismatches == 0
    one_d = compare("ensemble", "confidence", 1, np.array([0.5, 0.25], np.float32), np.array([0.5, 0.75]),
                    np.array([3, 4]), labels=False)
    assert one_d.max_abs_diff == 0.5 and one_d.worst_row == 4 and not one_d.passed
    flipped = compare("x", "probabilities", 1, np.array([[0.9, 0.1]], np.float32), np.array([[0.1, 0.9]]),
                      np.array([0]), labels=False)
    assert flipped.label_mismatches == 0


def test_compare_of_no_rows_passes_with_nothing_to_report():
    check = compare("ensemble", "confidence", 1, np.zeros(0, np.float32), np.zeros(0), np.zeros(0, int))
    assert (check.rows, check.max_abs_diff, check.worst_row, check.label_mismatches) == (0, 0.0, 0, 0)
    assert check.label_agreement == 1.0 and check.passed


def test_a_lowered_graph_is_gated_on_label_agreement_only():
    want = np.tile([[0.1, 0.2, 0.7]], (100, 1))
    got = want.astype(np.float32) + np.float32(0.05)  # far outside the float32 tolerance: not gated
    got[:1] = [0.8, 0.1, 0.1]                          # one label of 100 differs: 99% agree
    check = compare("ensemble (int8)", "probabilities", 512, got, want, np.arange(100), precision=INT8)
    assert check.tolerance == np.inf and check.min_agreement == 0.99
    assert check.label_mismatches == 1 and check.label_agreement == 0.99 and check.passed
    got[:2] = [0.8, 0.1, 0.1]                          # two of 100: 98%, under the minimum
    assert not compare("ensemble (int8)", "probabilities", 512, got, want, np.arange(100), precision=INT8).passed
    many = np.vstack([got[1:2], np.tile(want[:1].astype(np.float32), (199, 1))])
    many[5, 1] = np.nan                                # a NaN fails it whatever the agreement
    nan = compare("ensemble (int8)", "probabilities", 512, many, np.tile(want[:1], (200, 1)), np.arange(200),
                  precision=INT8)
    assert nan.label_agreement == 0.99 and nan.max_abs_diff == np.inf and not nan.passed


@pytest.mark.parametrize(("rows", "mismatches", "agreement"), [(0, 0, 1.0), (4, 1, 0.75), (3, 3, 0.0)])
def test_label_agreement_is_the_share_of_rows_whose_labels_agree(rows, mismatches, agreement):
    check = Check("t", "label", 1, rows, 0.0, 0, mismatches, TOL)
    assert check.label_agreement == agreement
    assert check.passed == (mismatches == 0)


def test_describe_names_target_output_batch_figures_and_the_gate():
    strict = Check("member nhits", "probabilities", 7, 300, 2.5e-5, 42, 3, TOL)
    assert strict.describe() == ("member nhits probabilities at batch 7: max |diff| 2.5e-05 (tolerance 1e-05, "
                                 "worst row 42), 3 of 300 labels differ")
    lowered = Check("ensemble (int8)", "label", 1, 200, 0.004, 7, 1, np.inf, 0.99)
    assert lowered.describe() == ("ensemble (int8) label at batch 1: max |diff| 0.004 (labels must agree on "
                                  "99.00%, worst row 7), 1 of 200 labels differ")
    assert lowered.as_dict() == {"target": "ensemble (int8)", "output": "label", "batch_size": 1, "rows": 200,
                                 "max_abs_diff": 0.004, "worst_row": 7, "label_agreement": 0.995,
                                 "label_mismatches": 1, "passed": True}
