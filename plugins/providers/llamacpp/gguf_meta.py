"""What the provider reads from a GGUF's metadata besides its size: the chat template
(does it take tools?) and the pooling type an embedding load uses.

Read once per file version (path, size, mtime) with the header walker that `herd plan`
uses (gguf's constants, no tensor data, no per-token numpy views), so asking before
every call costs a dict lookup.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

#: words a tool-aware jinja template uses (`tools`, `tool_calls`, `role == 'tool'` …)
_TOOL_WORDS = re.compile(r"\btools?\b|\btool_calls?\b")


@dataclass(frozen=True, slots=True)
class GgufMeta:
    """The few metadata values the provider acts on."""

    chat_template: str | None
    #: llama_pooling_type id the file declares (`<arch>.pooling_type`), None if unset
    pooling_type: int | None

    @property
    def has_tool_template(self) -> bool:
        return bool(self.chat_template) and bool(_TOOL_WORDS.search(self.chat_template or ""))


def read_meta(path: Path) -> GgufMeta:
    """The file's GgufMeta; a file that cannot be read is a ValueError naming it."""
    stat = path.stat()
    return _read(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _read(path: str, size: int, mtime_ns: int) -> GgufMeta:
    from modelherd.plugins.resources.gguf_estimate import read_header

    meta, _tensors = read_header(path)
    arch = str(meta.get("general.architecture") or "llama")
    template = meta.get("tokenizer.chat_template")
    pooling = meta.get(f"{arch}.pooling_type")
    return GgufMeta(
        chat_template=template if isinstance(template, str) else None,
        pooling_type=int(pooling) if isinstance(pooling, int) else None,
    )
