"""Pure helpers shared by the providers: think splitting, Retry-After, redaction, names."""

from __future__ import annotations

import email.utils
import time

import pytest
from modelherd.plugins.providers.errors import close_names, parse_retry_after, status_error
from modelherd.plugins.providers.keys import find_key, redact
from modelherd.plugins.providers.ollama import close_tags
from modelherd.plugins.providers.think import ThinkSplitter, split_think


@pytest.mark.parametrize(
    ("text", "content", "reasoning"),
    [
        ("<think>\nplan\n</think>\n\nanswer", "answer", "plan"),
        ("<think>never closed", "", "never closed"),
        ("plain <b>html</b> & a < b", "plain <b>html</b> & a < b", None),
        ("before <think>x</think> after", "before after", "x"),
    ],
)
def test_split_think(text, content, reasoning):
    assert split_think(text) == (content, reasoning)


def test_splitter_holds_back_tags_split_across_chunks():
    splitter = ThinkSplitter()
    chunks = ["<th", "ink>rea", "son</thi", "nk>", "\n\n", "Ans", "wer <", "3"]
    visible = [splitter.feed(c) for c in chunks] + [splitter.flush()]
    assert "".join(visible) == "Answer <3"
    assert all("<th" not in v and "think" not in v for v in visible)
    assert splitter.reasoning == "reason"


def test_retry_after_forms():
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after({"retry-after": future}) or 0) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_redaction_masks_keys_and_key_shaped_text():
    key = "sk-proj-abcdef1234567890"
    text = f"Incorrect API key provided: {key}; also sk-ab**********7890 and AIzaSyD-12345678"
    cleaned = redact(text, key)
    assert "abcdef" not in cleaned and "sk-ab" not in cleaned and "AIzaSy" not in cleaned
    error = status_error(
        401, text, provider="OpenAI", alias="gpt", model="m", key_var="OPENAI_API_KEY", secret=key
    )
    assert key not in str(error) and "OPENAI_API_KEY" in str(error)


def test_find_key_prefers_the_standard_name():
    env = {"XAI_API_KEY": "new", "GROK_API_KEY": "old"}
    assert find_key(env, ("XAI_API_KEY",), ("GROK_API_KEY",)) == ("new", "XAI_API_KEY")
    assert find_key({}, ("XAI_API_KEY",), ("GROK_API_KEY",)) == (None, None)


def test_close_names():
    assert close_names("gpt-5.4-mni", ["gpt-5.4-mini", "gpt-4o", "o3"])[0] == "gpt-5.4-mini"
    assert close_tags("qwen3:14b", ["qwen3:latest", "llama3.2:latest"]) == ["qwen3:latest"]
    assert close_tags("mistral:latest", ["midstream:latest"]) == []
