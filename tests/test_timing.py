"""The timing helper every notebook times through."""

import time

import pytest

from retrieval.timing import ms_per_item, timed_per_item


def test_timed_per_item_returns_the_result_and_ms_per_item():
    out, ms = timed_per_item(lambda: (time.sleep(0.05), "done")[1], 10)
    assert out == "done" and ms >= 5.0            # 50 ms over 10 items: at least 5 ms each
    with pytest.raises(ValueError, match="nothing to time"):
        timed_per_item(lambda: None, 0)
    calls = []
    assert ms_per_item(lambda items: calls.append(list(items)), [1, 2, 3], warmup=1) >= 0
    assert calls == [[1], [1, 2, 3]]              # the warm-up call, then the timed one
