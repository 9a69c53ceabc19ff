"""Consensus over member answers: majority vote, confidence-weighted vote, and the
anonymised prompt a judge model reads.

Only parsed answers count. A tie is no consensus: callers that act on the result
(the trading agent) treat "no consensus" as doing nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from string import ascii_uppercase

from .answers import vote_key


@dataclass(slots=True)
class Ballot:
    """One valid vote: the member's label and confidence (None when it gave none)."""

    member: str
    label: str
    confidence: float | None
    reasoning: str = ""


@dataclass(slots=True)
class Tally:
    votes: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    winner: str | None = None
    tie: list[str] = field(default_factory=list)
    #: the winning voters' mean confidence (None if none of them gave one)
    confidence: float | None = None
    #: winning votes / valid votes
    agreement: float = 0.0


#: weight of a vote that came without a confidence, in the weighted strategy
DEFAULT_WEIGHT = 0.5


def tally(ballots: Sequence[Ballot], weighted: bool = False) -> Tally:
    result = Tally()
    display: dict[str, str] = {}
    for ballot in ballots:
        key = vote_key(ballot.label)
        display.setdefault(key, ballot.label)
        label = display[key]
        weight = 1.0
        if weighted:
            weight = ballot.confidence if ballot.confidence is not None else DEFAULT_WEIGHT
        result.votes[label] = result.votes.get(label, 0.0) + weight
        result.counts[label] = result.counts.get(label, 0) + 1
    if not result.votes:
        return result
    best = max(result.votes.values())
    leaders = [lab for lab, v in result.votes.items() if abs(v - best) < 1e-9]
    if len(leaders) > 1 or best <= 0:
        result.tie = sorted(leaders)
        return result
    winner = leaders[0]
    result.winner = winner
    confs = [
        b.confidence
        for b in ballots
        if display[vote_key(b.label)] == winner and b.confidence is not None
    ]
    result.confidence = sum(confs) / len(confs) if confs else None
    result.agreement = result.counts[winner] / len(ballots)
    return result


def leader_count(ballots: Sequence[Ballot]) -> tuple[str | None, int]:
    """The label with the most votes so far and its count (for early stopping)."""
    counts: dict[str, int] = {}
    for ballot in ballots:
        key = vote_key(ballot.label)
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None, 0
    key = max(counts, key=lambda k: counts[k])
    return key, counts[key]


def letter(index: int) -> str:
    """A, B, … Z, AA, AB … — anonymous names for the judge."""
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = ascii_uppercase[rem] + name
    return name


def judge_prompt(question: str, ballots: Sequence[Ballot]) -> str:
    """The members' answers as "Response A/B/…", with no model names (a council reads blind)."""
    parts = [f"Question: {question}", "", "Answers from independent panel members:"]
    for index, ballot in enumerate(ballots):
        conf = f" (confidence {ballot.confidence:.2f})" if ballot.confidence is not None else ""
        why = f" — {ballot.reasoning}" if ballot.reasoning else ""
        parts.append(f"Response {letter(index)}: {ballot.label}{conf}{why}")
    parts += ["", "Weigh the responses, then give the single best answer."]
    return "\n".join(parts)
