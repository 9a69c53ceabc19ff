"""`swarm`: ask N members at once and reach a consensus.

Members are model aliases, or one alias sampled several times with different seeds
(self-consistency), so a swarm works on the embedded model alone. Members run
concurrently in an anyio task group under a per-member timeout and an overall
deadline; once the outcome is settled (a quorum agrees) the stragglers are
cancelled — really cancelled, their calls stop — and the result says which members
failed and why. A failed, empty or unparseable answer is never a vote.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
from modelherd import Agent, AgentSettings
from modelherd.errors import CallTimeoutError, ConfigError, HerdError
from modelherd.lazy_model import LazyModel
from modelherd.plugins.observability.otel import agent_span
from modelherd.types import Message
from pydantic import BaseModel, Field, field_validator

from . import storage
from .answers import ParsedAnswer, ParseError, answer_schema, format_instructions, parse_answer
from .caveats import model_note
from .consensus import Ballot, judge_prompt, leader_count, tally

Status = Literal["pending", "ok", "unparsed", "error", "timeout", "cancelled"]

DEFAULT_SYSTEM = (
    "You are one member of an independent panel. Answer the question briefly and honestly."
)


class SwarmSettings(AgentSettings):
    """`[agents.swarm]` in plugins.toml."""

    #: model aliases; each is asked `samples` times
    members: list[str] = Field(default_factory=lambda: ["local"])
    #: answers per alias; more than 1 = self-consistency (different seeds, temperature > 0)
    samples: int = Field(default=3, ge=1, le=256)
    strategy: Literal["vote", "weighted", "judge"] = "vote"
    #: alias of the judge model (strategy = "judge"); default: the first member
    judge: str | None = None
    #: stop as soon as this many members agree; None = stop once a strict majority
    #: agrees under "vote" (the outcome cannot change), else wait for everyone
    quorum: int | None = Field(default=None, ge=1)
    early_stop: bool = True
    member_timeout: float = Field(default=60.0, gt=0)
    deadline: float = Field(default=180.0, gt=0)
    temperature: float = Field(default=0.8, ge=0)
    max_tokens: int = Field(default=96, ge=1)
    seed: int = 1
    #: a closed set of answers (votes are over these); None = free short answers
    labels: list[str] | None = None
    system: str | None = None
    #: send a JSON schema to members that support structured output
    structured: bool = True
    save: bool = True
    data_dir: str | None = None

    @field_validator("members")
    @classmethod
    def _members_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError('needs at least one model alias, e.g. members = ["local"]')
        return value


class Member(LazyModel):
    name: str
    alias: str
    seed: int | None = None


class MemberResult(LazyModel):
    name: str
    alias: str
    seed: int | None = None
    status: Status = "pending"
    label: str | None = None
    confidence: float | None = None
    reasoning: str = ""
    content: str = ""
    latency_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


class JudgeResult(LazyModel):
    alias: str
    status: Status = "pending"
    label: str | None = None
    confidence: float | None = None
    reasoning: str = ""
    latency_s: float | None = None
    error: str | None = None


class Consensus(LazyModel):
    label: str | None
    confidence: float | None = None
    agreement: float = 0.0
    decided_by: str
    tie: list[str] = Field(default_factory=list)
    quorum_reached: bool = False
    reason: str = ""


class SwarmResult(LazyModel):
    id: str
    question: str
    labels: list[str] | None
    strategy: str
    consensus: Consensus
    votes: dict[str, float]
    members: list[MemberResult]
    judge: JudgeResult | None = None
    elapsed_s: float
    input_tokens: int = 0
    output_tokens: int = 0
    created_at: str
    note: str = ""
    path: str | None = None

    @property
    def failed(self) -> list[MemberResult]:
        return [m for m in self.members if m.status != "ok"]


UpdateCallback = Callable[[list[MemberResult]], None]


class SwarmAgent(Agent):
    name = "swarm"
    description = "ask N models (or seeds) at once; consensus by vote, weighted vote or judge"
    Settings = SwarmSettings
    settings: SwarmSettings

    def __init__(self, herd: Any, settings: dict[str, Any] | None = None) -> None:
        super().__init__(herd, settings)
        self._notes: dict[tuple[str, ...], str] = {}

    def members(self) -> list[Member]:
        s = self.settings
        out: list[Member] = []
        for alias in s.members:
            for i in range(s.samples):
                if s.samples == 1:
                    out.append(Member(name=alias, alias=alias))
                else:
                    out.append(Member(name=f"{alias}#{i + 1}", alias=alias, seed=s.seed + i))
        names = [m.name for m in out]
        if len(set(names)) != len(names):  # an alias listed twice: number every entry
            out = [
                Member(name=f"{m.name}@{i + 1}", alias=m.alias, seed=m.seed)
                for i, m in enumerate(out)
            ]
        return out

    def _note(self, aliases: list[str]) -> str:
        key = tuple(sorted(set(aliases)))
        note = self._notes.get(key)
        if note is None:
            note = self._notes[key] = model_note(self.herd, key)
        return note

    def check_aliases(self) -> None:
        """Every member alias (and the judge's) resolves to a model, before anything runs:
        a typo is one ConfigError naming the setting, not a swarm where nobody answers."""
        s = self.settings
        named = [("members", alias) for alias in s.members]
        if s.judge or s.strategy == "judge":
            named.append(("judge", s.judge or s.members[0]))
        for setting, alias in named:
            try:
                self.herd.get_model(alias)
            except ConfigError as exc:
                raise ConfigError(
                    f"swarm {setting}: {exc.message} (-m / --judge, or [agents.swarm] {setting})"
                ) from None

    def _supports_schema(self, alias: str) -> bool:
        try:
            return bool(self.herd.get_model(alias).supports_schema)
        except HerdError:
            return False

    async def run(self, **kwargs: Any) -> SwarmResult:
        """`run(question=..., labels=None, on_update=None)`."""
        args = kwargs.pop("args", None)  # `herd run swarm "question"` passes the words
        question = (
            kwargs.pop("question", None) or kwargs.pop("prompt", None) or " ".join(args or [])
        )
        if not question:
            raise ConfigError('swarm needs a question — e.g. herd swarm "Is the sky blue?"')
        return await self.ask(str(question), **kwargs)

    async def ask(
        self,
        question: str,
        *,
        labels: Sequence[str] | None = None,
        label_key: str = "answer",
        system: str | None = None,
        context: str | None = None,
        on_update: UpdateCallback | None = None,
        save: bool | None = None,
        agent: str | None = None,
        output_type: type[BaseModel] | None = None,
    ) -> SwarmResult:
        """Ask every member `question` (plus `context`) and return the consensus.
        `output_type`: members that take JSON schemas answer in that pydantic model
        (validated by the kernel before the answer votes; docs/tools.md)."""
        s = self.settings
        labels = list(labels) if labels is not None else s.labels
        self.check_aliases()
        members = self.members()
        started = time.perf_counter()
        created = storage.utc_now()
        results = [MemberResult(name=m.name, alias=m.alias, seed=m.seed) for m in members]
        ballots: list[Ballot] = []
        strict_majority = len(members) // 2 + 1
        quorum = s.quorum or (strict_majority if s.strategy == "vote" and s.early_stop else None)
        stop_reason: list[str] = []
        schema = answer_schema(labels, label_key)
        parts = (context, question, format_instructions(labels, label_key))
        user = "\n\n".join(p for p in parts if p)
        # Message objects built once: the kernel validates dicts on every call
        messages = [
            Message(role="system", content=system or s.system or DEFAULT_SYSTEM),
            Message(role="user", content=user),
        ]
        tag = agent or self.name
        keys = (label_key, "answer")
        #: parsed answers by response identity: the kernel's `validate` hook and the vote
        #: read the same text, so it is parsed once
        #: (the response is kept in the entry so its id cannot be reused by another one)
        parsed_by_id: dict[int, tuple[Any, ParsedAnswer | ParseError]] = {}

        def parse_once(response: Any) -> ParsedAnswer:
            entry = parsed_by_id.get(id(response))
            if entry is not None and entry[0] is response:
                found = entry[1]
            else:
                try:
                    found = parse_answer(response.content, labels, keys)
                except ParseError as exc:
                    found = exc
                parsed_by_id[id(response)] = (response, found)
            if isinstance(found, ParseError):
                raise found
            return found

        def valid(response: Any) -> bool:
            try:
                parse_once(response)
            except ParseError:
                return False
            return True

        async def ask_one(index: int, member: Member, scope: anyio.CancelScope) -> None:
            result = results[index]
            options: dict[str, Any] = {"max_tokens": s.max_tokens}
            if member.seed is not None:
                options.update(seed=member.seed, temperature=s.temperature)
            if s.structured and self._supports_schema(member.alias):
                if output_type is not None:
                    options["output_type"] = output_type
                else:
                    options["response_format"] = {"type": "json_schema", "schema": schema}
            t0 = time.perf_counter()
            try:
                # no deadline on this scope: one watchdog cancels late members (a timer
                # per member costs ~35 µs each, which a 64-member swarm would feel)
                with anyio.CancelScope() as own:
                    member_scopes[index] = own
                    response = await self.herd.chat(
                        member.alias,
                        messages,
                        agent=tag,
                        timeout=s.member_timeout,
                        validate=valid,
                        **options,
                    )
                if own.cancelled_caught:
                    raise TimeoutError
            except anyio.get_cancelled_exc_class():
                result.status = "cancelled"
                result.latency_s = time.perf_counter() - t0
                result.error = "cancelled: " + (
                    stop_reason[0] if stop_reason else f"overall deadline of {s.deadline:g}s passed"
                )
                _notify(on_update, results)
                raise
            except TimeoutError:  # the watchdog: member_timeout passed for this member
                result.status = "timeout"
                result.error = f"no answer within {s.member_timeout:g}s (member_timeout)"
            except CallTimeoutError as exc:  # the kernel's own deadline: its message says
                result.status = "timeout"
                result.error = f"{type(exc).__name__}: {exc.message}"
            except HerdError as exc:
                result.status = "error"
                result.error = f"{type(exc).__name__}: {exc.message}"
            except Exception as exc:  # a member's failure must not sink the swarm
                result.status = "error"
                result.error = f"{type(exc).__name__}: {exc}"
            else:
                result.content = response.content
                result.input_tokens = response.usage.input_tokens
                result.output_tokens = response.usage.output_tokens
                try:
                    parsed = parse_once(response)
                except ParseError as exc:
                    result.status = "unparsed"
                    result.error = f"unparseable answer: {exc}" + _cut_hint(response, s.max_tokens)
                else:
                    result.status = "ok"
                    result.label = parsed.label
                    result.confidence = parsed.confidence
                    result.reasoning = parsed.reasoning
                    ballots.append(
                        Ballot(member.name, parsed.label, parsed.confidence, parsed.reasoning)
                    )
            result.latency_s = time.perf_counter() - t0
            member_scopes[index] = None
            pending[0] -= 1
            if pending[0] == 0:
                watchdog.cancel()
            _notify(on_update, results)
            if quorum is not None and not stop_reason:
                _, count = leader_count(ballots)
                if count >= quorum:
                    stop_reason.append(f"quorum of {quorum} reached")
                    scope.cancel()

        member_scopes: list[anyio.CancelScope | None] = [None] * len(members)
        pending = [len(members)]
        watchdog = anyio.CancelScope()

        async def cancel_late_members() -> None:
            """member_timeout counts from the swarm's start (members start together)."""
            with watchdog:
                await anyio.sleep(s.member_timeout)
                for scope in member_scopes:
                    if scope is not None:
                        scope.cancel()

        # one parent span per run: each member's call is a child in the trace tree
        # (a no-op unless tracing is on, see docs/observability.md)
        async with agent_span(
            self.herd, tag, **{"herd.members": len(members), "herd.strategy": s.strategy}
        ):
            _notify(on_update, results)
            with anyio.move_on_after(s.deadline):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_late_members)
                    for index, member in enumerate(members):
                        tg.start_soon(ask_one, index, member, tg.cancel_scope)

            counted = tally(ballots, weighted=s.strategy == "weighted")
            consensus = _consensus_from(counted, s.strategy, len(ballots), bool(stop_reason))
            judge: JudgeResult | None = None
            if s.strategy == "judge":
                judge, consensus = await self._judge(
                    question, labels, label_key, ballots, counted, bool(stop_reason), tag
                )
        aliases = [m.alias for m in members] + ([judge.alias] if judge else [])
        result = SwarmResult(
            id=hashlib.blake2b(f"{created}{question}".encode(), digest_size=6).hexdigest(),
            question=question,
            labels=labels,
            strategy=s.strategy,
            consensus=consensus,
            votes={k: round(v, 4) for k, v in counted.votes.items()},
            members=results,
            judge=judge,
            elapsed_s=time.perf_counter() - started,
            input_tokens=sum(r.input_tokens for r in results),
            output_tokens=sum(r.output_tokens for r in results),
            created_at=created,
            note=self._note(aliases),
        )
        if save if save is not None else s.save:
            path = storage.data_dir(s.data_dir) / "swarm" / f"{storage.stamp()}-{result.id}.json"
            result.path = str(path)
            storage.write_json(path, result.model_dump(mode="json"))
        return result

    async def _judge(
        self,
        question: str,
        labels: list[str] | None,
        label_key: str,
        ballots: list[Ballot],
        counted: Any,
        quorum_reached: bool,
        tag: str,
    ) -> tuple[JudgeResult, Consensus]:
        s = self.settings
        alias = s.judge or s.members[0]
        judge = JudgeResult(alias=alias)
        fallback = _consensus_from(counted, "vote", len(ballots), quorum_reached)
        if not ballots:
            judge.status = "cancelled"
            judge.error = "no valid member answers to judge"
            return judge, fallback
        messages = [
            {
                "role": "system",
                "content": "You are the judge of a panel. Read the anonymous "
                "answers and give the best final answer.",
            },
            {
                "role": "user",
                "content": judge_prompt(question, ballots)
                + "\n\n"
                + format_instructions(labels, label_key),
            },
        ]
        options: dict[str, Any] = {"max_tokens": s.max_tokens, "temperature": 0.0}
        if s.structured and self._supports_schema(alias):
            options["response_format"] = {
                "type": "json_schema",
                "schema": answer_schema(labels, label_key),
            }
        t0 = time.perf_counter()
        try:
            with anyio.fail_after(s.member_timeout):
                response = await self.herd.chat(
                    alias, messages, agent=tag, timeout=s.member_timeout, **options
                )
            parsed = parse_answer(response.content, labels, (label_key, "answer"))
        except (TimeoutError, CallTimeoutError):
            judge.status, judge.error = "timeout", f"no answer within {s.member_timeout:g}s"
        except HerdError as exc:
            judge.status, judge.error = "error", f"{type(exc).__name__}: {exc.message}"
        except ParseError as exc:
            judge.status, judge.error = "unparsed", f"unparseable answer: {exc}"
        except Exception as exc:
            judge.status, judge.error = "error", f"{type(exc).__name__}: {exc}"
        else:
            judge.status, judge.label = "ok", parsed.label
            judge.confidence, judge.reasoning = parsed.confidence, parsed.reasoning
        judge.latency_s = time.perf_counter() - t0
        if judge.status != "ok":
            fallback.decided_by = f"vote (judge failed: {judge.status})"
            return judge, fallback
        assert judge.label is not None
        agree = sum(1 for b in ballots if b.label.lower() == judge.label.lower())
        return judge, Consensus(
            label=judge.label,
            confidence=judge.confidence,
            agreement=agree / len(ballots),
            decided_by="judge",
            quorum_reached=quorum_reached,
        )


def _cut_hint(response: Any, max_tokens: int) -> str:
    """Why an answer may not parse: it stopped at the token limit."""
    if getattr(response, "finish_reason", None) == "length":
        return f" (it stopped at max_tokens = {max_tokens}: raise --max-tokens)"
    return ""


def _notify(callback: UpdateCallback | None, results: list[MemberResult]) -> None:
    if callback is not None:
        with contextlib.suppress(Exception):  # a display glitch must never change the outcome
            callback(results)


def _consensus_from(counted: Any, strategy: str, valid: int, quorum_reached: bool) -> Consensus:
    decided_by = "weighted" if strategy == "weighted" else "vote"
    if valid == 0:
        return Consensus(label=None, decided_by=decided_by, reason="no valid answers")
    if counted.winner is None:
        return Consensus(
            label=None,
            decided_by=decided_by,
            tie=counted.tie,
            reason=f"tie between {', '.join(counted.tie)}",
        )
    return Consensus(
        label=counted.winner,
        confidence=counted.confidence,
        agreement=counted.agreement,
        decided_by=decided_by,
        quorum_reached=quorum_reached,
    )


def load_result(path: str | Path) -> SwarmResult:
    return SwarmResult.model_validate(storage.read_json(Path(path)))
