"""A1111's prompt editing, alternation and AND (desktop.engine.prompt_schedule), against per-call
tables worked out by hand from A1111's rules: `when` -> end step, then model call i (0-based) uses the
first schedule entry ending at or after i."""

from __future__ import annotations

import pytest

from desktop.engine.prompt_schedule import has_schedule, per_step, plan_prompts, schedule_prompt, split_and

# (prompt, steps, the text of each model call 0..steps-1)
CASES = [
    ("a cat", 4, ["a cat"] * 4),
    # [a:b:2]: entries end at 2 (a) and 4 (b); calls 0, 1, 2 are <= 2.
    ("a [cat:dog:2]", 4, ["a cat", "a cat", "a cat", "a dog"]),
    # A fraction of the steps: 0.5 * 6 = 3.
    ("[cat:dog:0.5]", 6, ["cat"] * 4 + ["dog"] * 2),
    # int(0.3 * 5) = 1.
    ("[cat:dog:0.3]", 5, ["cat", "cat", "dog", "dog", "dog"]),
    # A decimal of 1 or more is still a fraction: 1.0 * 4 = the last step, so never dog.
    ("[cat:dog:1.0]", 4, ["cat"] * 4),
    # A step past the end is clamped to it.
    ("[cat:dog:40]", 3, ["cat"] * 3),
    # Step 0 adds nothing to the schedule: the `after` text from the start.
    ("[cat:dog:0]", 3, ["dog"] * 3),
    ("a [red:1] ball", 3, ["a  ball", "a  ball", "a red ball"]),
    ("a [red::1] ball", 3, ["a red ball", "a red ball", "a  ball"]),
    ("x [ red : 2 ]", 4, ["x ", "x ", "x ", "x  red "]),
    # Alternation: entries end at every step 1..n with options (step-1) % n.
    ("[cat|dog]", 5, ["cat", "cat", "dog", "cat", "dog"]),
    ("[cat|dog|fox]", 6, ["cat", "cat", "dog", "fox", "cat", "dog"]),
    ("[cat|]", 4, ["cat", "cat", "", "cat"]),
    # Nested: an alternation inside an edit, an edit inside an edit.
    ("[[cat|dog]:bird:2]", 5, ["cat", "cat", "dog", "bird", "bird"]),
    ("[a:[b:c:3]:1]", 5, ["a", "a", "b", "b", "c"]),
    ("[a:[b:c:0.6]:0.2]", 5, ["a", "a", "b", "b", "c"]),
    # Inside emphasis the construct still schedules; the brackets stay for prompt_syntax.
    ("(a [cat:dog:1]:1.2), [soft]", 3, ["(a cat:1.2), [soft]"] * 2 + ["(a dog:1.2), [soft]"]),
    # Not constructs: plain text, exactly as typed.
    ("[a:b]", 3, ["[a:b]"] * 3),
    ("[a:b:c:d]", 3, ["[a:b:c:d]"] * 3),
    ("[a:b:x]", 3, ["[a:b:x]"] * 3),
    (r"\[a:b:1\] [unclosed", 3, [r"\[a:b:1\] [unclosed"] * 3),
    ("time: 12:30 | wide", 2, ["time: 12:30 | wide"] * 2),
]


@pytest.mark.parametrize(("prompt", "steps", "expected"), CASES)
def test_each_call_gets_the_reference_prompt(prompt, steps, expected):
    assert per_step(schedule_prompt(prompt, steps), steps) == expected


def test_the_schedule_lists_each_distinct_prompt_once_with_its_last_step():
    assert schedule_prompt("[cat:dog:2]", 10).entries == ((2, "cat"), (10, "dog"))
    assert schedule_prompt("[cat:dog:0.25] [x|x]", 8).entries == ((2, "cat x"), (8, "dog x"))


def test_and_splits_weighted_sub_prompts():
    # As A1111: the text before a part's weight; spaces around it do not change the tokens.
    assert split_and("a cat :1.2 AND a dog:0.8 AND sky ") == (("a cat", 1.2), (" a dog", 0.8), (" sky ", 1.0))
    assert split_and("a cat ") == (("a cat ", 1.0),)
    assert split_and("a (red:1.5) ball") == (("a (red:1.5) ball", 1.0),)  # a weight in brackets is emphasis
    assert split_and("ANDROID, sand") == (("ANDROID, sand", 1.0),)
    plan = plan_prompts("[cat:dog:1]AND sky :0.5", "[blurry|ugly]", 3)
    assert [part.weight for part in plan.positive] == [1.0, 0.5]
    assert per_step(plan.positive[0].schedule, 3) == ["cat", "cat", "dog"]
    assert per_step(plan.negative, 3) == ["blurry", "blurry", "ugly"]
    assert plan.texts == ("cat", "dog", " sky", "blurry", "ugly")
    assert not plan.is_plain


def test_plain_prompts_stay_plain():
    assert plan_prompts("a (red:1.2) cat, [soft] BREAK sky", "blurry", 20).is_plain
    assert not plan_prompts("a cat:1.1", "", 20).is_plain  # A1111 reads a trailing weight without AND too
    assert has_schedule("a [b|c]") and has_schedule("(a [b:3])") and not has_schedule("a [b] (c:1.1) [d:e]")


def test_deep_nesting_is_text_not_a_crash():
    for prompt in ("[" * 5000 + "a" + "]" * 5000, "[a:" * 5000 + "]" * 5000, "(" * 20000 + "[a|b]"):
        assert per_step(schedule_prompt(prompt, 2), 2) == [prompt, prompt]  # in well under a second


def test_constructs_schedule_down_to_the_depth_limit_and_a_deeper_prompt_stays_text():
    """MAX_DEPTH (64) nested brackets still parse (a schedule inside 63 emphases switches); one more and the
    whole prompt is text, as a guard against walls of brackets, never an error."""
    from desktop.engine.prompt_schedule import MAX_DEPTH

    deepest = "(" * (MAX_DEPTH - 1) + "[cat:dog:2]" + ")" * (MAX_DEPTH - 1)
    prompts = per_step(schedule_prompt(deepest, 4), 4)
    assert prompts[0] == "(" * (MAX_DEPTH - 1) + "cat" + ")" * (MAX_DEPTH - 1)
    assert prompts[-1] == "(" * (MAX_DEPTH - 1) + "dog" + ")" * (MAX_DEPTH - 1)
    too_deep = "(" + deepest + ")"
    assert per_step(schedule_prompt(too_deep, 4), 4) == [too_deep] * 4
