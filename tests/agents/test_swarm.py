"""Swarm consensus with scripted members: votes, ties, failures, timeouts, judge, cancellation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_helpers import CancelAwareModel, answer, mock
from modelherd.errors import ConfigError, ProviderError
from modelherd.testing import MockModel

LABELS = ["YES", "NO"]


def run_swarm(herd: Any, question: str = "Is it?", **kwargs: Any) -> Any:
    agent = herd.agent("swarm")
    return anyio.run(lambda: agent.ask(question, **kwargs))


def test_majority_vote_and_member_table(herd_factory: Any, _data_dir: Path) -> None:
    models = {
        name: mock(name, answer(lab)) for name, lab in (("a", "YES"), ("b", "YES"), ("c", "NO"))
    }
    herd = herd_factory(
        models, {"swarm": {"members": ["a", "b", "c"], "samples": 1, "early_stop": False}}
    )
    result = run_swarm(herd, labels=LABELS)
    assert result.consensus.label == "YES"
    assert result.consensus.agreement == pytest.approx(2 / 3)
    assert result.votes == {"YES": 2.0, "NO": 1.0}
    assert [m.status for m in result.members] == ["ok", "ok", "ok"]
    assert all(m.latency_s is not None and m.output_tokens > 0 for m in result.members)
    saved = json.loads(Path(result.path).read_text())
    assert saved["consensus"]["label"] == "YES"
    assert Path(result.path).is_relative_to(_data_dir)
    # every member was sent the schema with the labels as an enum
    fmt = models["a"].history[0].options["response_format"]
    assert fmt["schema"]["properties"]["answer"]["enum"] == LABELS


def test_failed_and_unparseable_answers_are_never_votes(herd_factory: Any) -> None:
    models = {
        "a": mock("a", "I cannot decide, maybe yes maybe no"),
        "b": mock("b", RuntimeError("boom")),
        "c": mock("c", ""),
        "d": mock("d", answer("NO", 0.4)),
        "e": mock("e", json.dumps({"answer": "MAYBE", "confidence": 1})),
    }
    herd = herd_factory(models, {"swarm": {"members": list(models), "samples": 1}})
    result = run_swarm(herd, labels=LABELS)
    by = {m.name: m for m in result.members}
    assert by["a"].status == "unparsed"
    assert by["a"].error == "unparseable answer: the text names more than one of YES, NO"
    assert by["b"].status == "error" and "RuntimeError: boom" in by["b"].error
    assert by["c"].status == "unparsed" and "empty" in by["c"].error
    assert by["e"].status == "unparsed" and "'MAYBE' is not one of YES, NO" in by["e"].error
    assert result.votes == {"NO": 1.0}
    assert result.consensus.label == "NO"
    assert len(result.failed) == 4


def test_tie_is_no_consensus(herd_factory: Any) -> None:
    models = {"a": mock("a", answer("YES")), "b": mock("b", answer("NO"))}
    herd = herd_factory(models, {"swarm": {"members": ["a", "b"], "samples": 1}})
    result = run_swarm(herd, labels=LABELS)
    assert result.consensus.label is None
    assert result.consensus.tie == ["NO", "YES"]
    assert result.consensus.reason == "tie between NO, YES"


def test_weighted_vote_uses_confidence(herd_factory: Any) -> None:
    models = {
        "a": mock("a", answer("YES", 0.2)),
        "b": mock("b", answer("YES", 0.2)),
        "c": mock("c", answer("NO", 0.9)),
    }
    herd = herd_factory(
        models, {"swarm": {"members": list(models), "samples": 1, "strategy": "weighted"}}
    )
    result = run_swarm(herd, labels=LABELS)
    assert result.consensus.label == "NO"
    assert result.consensus.decided_by == "weighted"
    assert result.votes == {"YES": 0.4, "NO": 0.9}


def test_member_timeout_is_reported_and_others_count(herd_factory: Any) -> None:
    slow = mock("slow", answer("NO"), latency=5.0, cls=CancelAwareModel)
    models = {"fast": mock("fast", answer("YES")), "slow": slow}
    herd = herd_factory(
        models,
        {
            "swarm": {
                "members": ["fast", "slow"],
                "samples": 1,
                "member_timeout": 0.2,
                "early_stop": False,
            }
        },
    )
    started = time.perf_counter()
    result = run_swarm(herd, labels=LABELS)
    assert time.perf_counter() - started < 2.0
    by = {m.name: m for m in result.members}
    assert by["slow"].status == "timeout"
    assert by["slow"].error == "no answer within 0.2s (member_timeout)"
    assert slow.cancelled >= 1 and slow.finished == 0
    assert result.consensus.label == "YES"


def test_quorum_cancels_stragglers(herd_factory: Any) -> None:
    models: dict[str, MockModel] = {
        "a": mock("a", answer("YES"), latency=0.01),
        "b": mock("b", answer("YES"), latency=0.02),
    }
    stragglers = {
        f"s{i}": mock(f"s{i}", answer("NO"), latency=3.0, cls=CancelAwareModel) for i in range(2)
    }
    models.update(stragglers)
    herd = herd_factory(models, {"swarm": {"members": list(models), "samples": 1, "quorum": 2}})
    started = time.perf_counter()
    result = run_swarm(herd, labels=LABELS)
    assert time.perf_counter() - started < 1.5
    assert result.consensus.label == "YES" and result.consensus.quorum_reached
    for name, model in stragglers.items():
        member = next(m for m in result.members if m.name == name)
        assert member.status == "cancelled"
        assert member.error == "cancelled: quorum of 2 reached"
        assert model.cancelled == 1 and model.finished == 0  # really stopped, not abandoned


def test_default_early_stop_at_strict_majority(herd_factory: Any) -> None:
    def by_seed(request: Any) -> str:
        return answer("YES") if request.options["seed"] <= 3 else answer("NO")

    model = CancelAwareModel()
    model.enqueue(*[by_seed] * 5)
    model.latency = 0.0
    herd = herd_factory({"m": model}, {"swarm": {"members": ["m"], "samples": 5, "seed": 1}})
    result = run_swarm(herd, labels=LABELS)
    assert result.consensus.label == "YES"
    seeds = sorted(r.options["seed"] for r in model.history)
    assert seeds == [1, 2, 3, 4, 5]
    assert {r.options["temperature"] for r in model.history} == {0.8}


def test_overall_deadline_cancels_everyone(herd_factory: Any) -> None:
    models = {
        f"m{i}": mock(f"m{i}", answer("YES"), latency=5.0, cls=CancelAwareModel) for i in range(3)
    }
    herd = herd_factory(models, {"swarm": {"members": list(models), "samples": 1, "deadline": 0.2}})
    result = run_swarm(herd, labels=LABELS)
    assert result.consensus.label is None and result.consensus.reason == "no valid answers"
    assert {m.error for m in result.members} == {"cancelled: overall deadline of 0.2s passed"}
    assert all(m.cancelled == 1 for m in models.values())


def test_judge_synthesises_from_anonymous_answers(herd_factory: Any) -> None:
    judge = mock("judge", answer("NO", 0.7, why="B is right"))
    models = {
        "a": mock("a", answer("YES")),
        "b": mock("b", answer("NO")),
        "c": mock("c", answer("YES")),
        "judge": judge,
    }
    herd = herd_factory(
        models,
        {
            "swarm": {
                "members": ["a", "b", "c"],
                "samples": 1,
                "strategy": "judge",
                "judge": "judge",
            }
        },
    )
    result = run_swarm(herd, labels=LABELS)
    assert result.consensus.label == "NO" and result.consensus.decided_by == "judge"
    prompt = judge.history[0].messages[-1].content
    assert "Response A: YES" in prompt and "Response C: YES" in prompt
    assert " a " not in f" {prompt} " and "'b'" not in prompt  # member names stay hidden


def test_judge_failure_falls_back_to_vote(herd_factory: Any) -> None:
    judge = mock("judge", *[ProviderError("judge down")] * 3)
    models = {
        "a": mock("a", answer("YES")),
        "b": mock("b", answer("YES")),
        "c": mock("c", answer("NO")),
        "judge": judge,
    }
    herd = herd_factory(
        models,
        {
            "swarm": {
                "members": ["a", "b", "c"],
                "samples": 1,
                "strategy": "judge",
                "judge": "judge",
            }
        },
    )
    result = run_swarm(herd, labels=LABELS)
    assert result.judge.status == "error"
    assert result.judge.error == "ProviderError: judge down"
    assert result.consensus.label == "YES"
    assert result.consensus.decided_by == "vote (judge failed: error)"


def test_free_text_answers_vote_case_insensitively(herd_factory: Any) -> None:
    models = {
        "a": mock("a", answer("Paris")),
        "b": mock("b", answer("paris ")),
        "c": mock("c", answer("Lyon")),
    }
    herd = herd_factory(models, {"swarm": {"members": list(models), "samples": 1}})
    result = run_swarm(herd, "Capital of France?")
    assert result.consensus.label == "Paris"
    assert result.votes == {"Paris": 2.0, "Lyon": 1.0}


def test_bad_settings_say_what_to_fix(herd_factory: Any) -> None:
    herd = herd_factory({"a": MockModel()}, {"swarm": {"members": [], "bogus": 1}})
    with pytest.raises(ConfigError, match=r"\[agents.swarm\] members: .*needs at least one"):
        herd.agent("swarm")
    herd2 = herd_factory({"a": MockModel()}, {"swarm": {"strategy": "council"}})
    with pytest.raises(ConfigError, match=r"\[agents.swarm\] strategy: Input should be 'vote'"):
        herd2.agent("swarm")


def test_note_says_embedded_model_has_no_judgment(herd_factory: Any) -> None:
    herd = herd_factory(
        {"a": mock("a", answer("YES"))}, {"swarm": {"members": ["a"], "samples": 1}}
    )
    result = run_swarm(herd, labels=LABELS)
    assert result.note.startswith("model: a (language-model output")


def test_cut_off_json_is_never_a_vote(herd_factory: Any) -> None:
    """The README's example ended in a tie between `{`, a cut-off JSON string and prose:
    an answer that starts as JSON but does not parse is unparsed, not a label."""
    from modelherd.types import ChatResponse

    cut = ChatResponse(
        content='{"answer": "BUY", "confidence": 0.7, "reasoning": "the pri',
        model="m",
        provider="mock",
        finish_reason="length",
    )
    models = {
        "a": mock("a", "{\n"),
        "b": mock("b", cut),
        "c": mock("c", answer("SELL", 0.6)),
        "d": mock("d", '```json\n{"answer": "BU'),
    }
    herd = herd_factory(
        models, {"swarm": {"members": list(models), "samples": 1, "early_stop": False}}
    )
    result = run_swarm(herd)
    assert [m.status for m in result.members] == ["unparsed", "unparsed", "ok", "unparsed"]
    assert result.members[0].error == "unparseable answer: the JSON answer is cut off or invalid"
    assert result.members[1].error == (
        "unparseable answer: the JSON answer is cut off or invalid "
        "(it stopped at max_tokens = 96: raise --max-tokens)"
    )
    assert result.votes == {"SELL": 1.0} and result.consensus.label == "SELL"
    assert not result.consensus.tie


def test_unknown_member_or_judge_alias_fails_before_running(herd_factory: Any) -> None:
    model = mock("a", answer("YES"))
    herd = herd_factory({"a": model}, {"swarm": {"members": ["a", "nope"], "samples": 1}})
    with pytest.raises(ConfigError, match=r"^swarm members: unknown model 'nope' — "):
        run_swarm(herd)
    herd2 = herd_factory({"a": model}, {"swarm": {"members": ["a"], "judge": "nope"}})
    with pytest.raises(
        ConfigError, match=r"^swarm judge: unknown model 'nope' — .*\[models\.nope\]"
    ):
        run_swarm(herd2)
    assert model.history == []  # nothing ran


def test_a_member_timeout_from_the_kernel_keeps_its_own_message(herd_factory: Any) -> None:
    """A fast failure typed as a timeout says what happened, not 'no answer within 60s'."""
    from modelherd.errors import CallTimeoutError

    slow = CallTimeoutError("'a' (mock) gave no answer within 0.2s — pass a larger")
    failing = mock("a", *[slow] * 5)  # every retry too
    herd = herd_factory(
        {"a": failing, "b": mock("b", answer("YES"))},
        {"swarm": {"members": ["a", "b"], "samples": 1, "early_stop": False}},
    )
    result = run_swarm(herd)
    assert result.members[0].status == "timeout"
    assert result.members[0].error == (
        "CallTimeoutError: 'a' (mock) gave no answer within 0.2s — pass a larger"
    )
