"""Which messages a model sees (server/chat/backends/context.py, build_messages): the system prompt
first, then the latest earlier messages that fit the character budget, oldest dropped first and
always whole, then the new user message, which is sent even when it alone is over the budget.
Partial replies (cancelled, error, interrupted) are sent as far as they got; empty ones are left out.
"""

from __future__ import annotations

from server.chat.backends import ContextMessage
from server.chat.backends.context import build_messages

SYSTEM = "You are a test."


def user(content: str) -> ContextMessage:
    return ContextMessage("user", content, "complete")


def assistant(content: str, status: str = "complete") -> ContextMessage:
    return ContextMessage("assistant", content, status)


def pairs(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


def test_system_prompt_first_then_context_in_order_then_the_new_message():
    context = [user("q1"), assistant("a1"), user("q2"), assistant("a2")]
    assert pairs(build_messages(SYSTEM, context, "q3", 1000)) == [
        ("system", SYSTEM), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"), ("user", "q3")]


def test_only_role_and_content_are_sent():
    messages = build_messages(SYSTEM, [user("q1"), assistant("a1", "cancelled")], "q2", 1000)
    assert all(set(m) == {"role", "content"} for m in messages)


def test_no_system_message_when_the_prompt_is_empty():
    assert pairs(build_messages("", [user("q1"), assistant("a1")], "q2", 1000)) == [
        ("user", "q1"), ("assistant", "a1"), ("user", "q2")]


def test_without_context_the_system_prompt_and_the_message():
    assert pairs(build_messages(SYSTEM, [], "hello", 1000)) == [("system", SYSTEM), ("user", "hello")]


def test_oldest_messages_are_dropped_first_and_whole():
    context = [user("a" * 40), assistant("b" * 40), user("c" * 40), assistant("d" * 40)]
    # 100 chars: the new message (10) and the two latest (80); the next (40) would not fit.
    sent = pairs(build_messages(SYSTEM, context, "e" * 10, 100))
    assert sent == [("system", SYSTEM), ("user", "c" * 40), ("assistant", "d" * 40), ("user", "e" * 10)]


def test_the_budget_is_filled_exactly_when_it_can_be():
    context = [user("a" * 30), assistant("b" * 30), user("c" * 30)]
    assert len(build_messages(SYSTEM, context, "d" * 10, 70)) == 1 + 2 + 1  # 30 + 30 + 10 == 70
    assert len(build_messages(SYSTEM, context, "d" * 10, 69)) == 1 + 1 + 1


def test_never_half_a_message_and_never_a_gap():
    # A long message stops the walk back: older short ones that would fit are not sent past it,
    # since the model would then see a conversation with a hole in it.
    context = [user("old"), assistant("x" * 500), user("recent")]
    sent = pairs(build_messages(SYSTEM, context, "now", 100))
    assert sent == [("system", SYSTEM), ("user", "recent"), ("user", "now")]
    for _, content in sent:
        assert content in {SYSTEM, "old", "x" * 500, "recent", "now"}


def test_every_budget_gives_a_whole_suffix_of_the_context():
    context = [user(f"question {i} " * (i + 1)) if i % 2 == 0 else assistant(f"answer {i} " * (i + 1))
               for i in range(12)]
    whole = [(m.role, m.content) for m in context]
    for budget in range(0, 1200, 7):
        sent = pairs(build_messages(SYSTEM, context, "new", budget))
        assert sent[0] == ("system", SYSTEM) and sent[-1] == ("user", "new")
        kept = sent[1:-1]
        assert kept == whole[len(whole) - len(kept):], budget
        used = sum(len(c) for _, c in kept) + len("new")
        assert used <= budget or not kept, budget
        if len(kept) < len(whole):  # the longest suffix that fits
            assert used + len(whole[len(whole) - len(kept) - 1][1]) > budget, budget


def test_the_new_message_is_sent_even_when_it_alone_exceeds_the_budget():
    long = "z" * 500
    assert pairs(build_messages(SYSTEM, [user("q1"), assistant("a1")], long, 100)) == [
        ("system", SYSTEM), ("user", long)]
    assert pairs(build_messages(SYSTEM, [user("q1")], long, 0)) == [("system", SYSTEM), ("user", long)]


def test_empty_partial_replies_are_left_out():
    context = [user("q1"), assistant("", "error"), user("q2"), assistant("", "interrupted"),
               user("q3"), assistant("", "cancelled")]
    assert pairs(build_messages(SYSTEM, context, "q4", 1000)) == [
        ("system", SYSTEM), ("user", "q1"), ("user", "q2"), ("user", "q3"), ("user", "q4")]


def test_partial_replies_are_kept_as_they_were():
    context = [user("q1"), assistant("half an ans", "cancelled"), user("q2"), assistant("It broke he", "error"),
               user("q3"), assistant("The client le", "interrupted")]
    assert pairs(build_messages(SYSTEM, context, "q4", 1000)) == [
        ("system", SYSTEM), ("user", "q1"), ("assistant", "half an ans"), ("user", "q2"),
        ("assistant", "It broke he"), ("user", "q3"), ("assistant", "The client le"), ("user", "q4")]


def test_empty_messages_cost_nothing_against_the_budget():
    context = [user("a" * 45), assistant("", "error"), user("b" * 45)]
    assert pairs(build_messages(SYSTEM, context, "c" * 10, 100)) == [
        ("system", SYSTEM), ("user", "a" * 45), ("user", "b" * 45), ("user", "c" * 10)]


def test_the_inputs_are_not_modified():
    context = [user("q1"), assistant("a1")]
    before = list(context)
    build_messages(SYSTEM, context, "q2", 3)
    assert context == before
