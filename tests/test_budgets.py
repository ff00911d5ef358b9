"""The front end's byte budgets as objects: a body is charged as it grows and given back whole;
one that could not fit beside what is held is refused before it is read; an answer that would
pass the answers' budget is refused, without Retry-After when it could never fit. On a real
server, with real sockets: tests/test_connection_bounds.py and tests/test_hardening.py."""

import pytest

from detserve.front.answer_budget import AnswerBudget
from detserve.front.body_budget import BodyBudget
from detserve.refusals import Refusal

MIB = 1 << 20


def test_a_body_holds_what_it_grew_to_and_gives_it_back_whole():
    budget = BodyBudget(8 * MIB)
    with budget.reading(6 * MIB) as first:
        assert budget.held_bytes == 0, "a declared length holds nothing"
        first.grow(4 * MIB)
        first.shrink(1 * MIB)
        assert (first.held_bytes, budget.held_bytes) == (3 * MIB, 3 * MIB)
        with budget.reading(5 * MIB) as second:
            second.grow(5 * MIB)
            with pytest.raises(Refusal) as refused:
                second.grow(1)
            assert refused.value.status == 503 and refused.value.headers["Retry-After"]
            assert "8 MB of request bodies" in refused.value.message
        assert budget.held_bytes == 3 * MIB
        with pytest.raises(Refusal) as refused:  # 3 held + 6 declared > 8: refused before a byte is read
            with budget.reading(6 * MIB):
                pass
        assert refused.value.status == 503 and refused.value.close
    assert budget.held_bytes == 0


def test_an_answer_is_held_while_written_and_one_that_never_fits_has_no_retry_after():
    budget = AnswerBudget(10 * MIB)
    with budget.holding(7 * MIB):
        assert budget.held_bytes == 7 * MIB
        with pytest.raises(Refusal) as refused:
            with budget.holding(4 * MIB):
                pass
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
        assert "--max-answer-buffer-mb 10" in refused.value.message
    assert budget.held_bytes == 0
    with pytest.raises(Refusal) as refused:
        with budget.holding(11 * MIB):
            pass
    assert refused.value.status == 503 and "Retry-After" not in refused.value.headers
    assert budget.held_bytes == 0
