"""Selection on inputs the other tests never try: label dtypes, tiny or empty splits, SCL's last block,
checkpoints whose image processor has another size than the config."""

import math

import numpy as np
import pytest

from hf_nc.selection import scores as S


@pytest.mark.parametrize("labels", [np.array(["a", "b", "c"] * 4), np.array(["a", "b", "c"] * 4, dtype=object)])
def test_string_labels_are_refused_naming_the_dtype(labels):
    x = np.random.default_rng(0).normal(size=(12, 5))
    with pytest.raises(ValueError, match="integer class indices.*dtype"):  # was a TypeError from np.mod
        S.logme(x, labels)
    with pytest.raises(ValueError, match="integer class indices.*dtype"):
        S.compute_scores(x, labels, ["nc1"])


def test_huge_float_label_is_reported_as_it_is():
    x = np.random.default_rng(0).normal(size=(12, 5))
    y = np.repeat([0.0, 1.0, 2.0], 4)
    y[-1] = 1e20
    with pytest.raises(ValueError, match=r"outside \[0, 3\): min 0, max 1e\+20"):  # the int64 cast wrapped it to -2**63
        S.logme(x, y, num_classes=3)
    y[-1] = 2.0
    assert S.logme(x, y) == S.logme(x, y.astype(np.int64))  # integral floats still work
