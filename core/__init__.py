"""modelherd: a plugin kernel that manages the LLM models behind AI agents.

    from modelherd import Herd
    herd = Herd()
    print(herd.chat_sync("local", "Say hi").content)

Importing this package loads no SDK, no llama.cpp and no NVML: plugins import
those inside the methods that need them.
"""

from importlib.metadata import PackageNotFoundError, version

from .agent import Agent, AgentSettings
from .cache import CacheTier
from .errors import (
    AllModelsFailedError,
    AuthenticationError,
    BadRequestError,
    BadResponseError,
    BudgetExceededError,
    CacheMissError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigError,
    ConnectionDroppedError,
    ConnectionFailedError,
    ConnectionRefusedByServerError,
    HerdError,
    HostNotFoundError,
    InvalidOptionError,
    MissingDependencyError,
    ModelNotFoundError,
    OverloadedError,
    PluginLoadError,
    ProviderError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitError,
    UnknownModelError,
)
from .kernel import Herd, hookimpl
from .provider import Model, ProviderSettings, SamplingOptions
from .tool_stream import IncompleteToolCallError
from .tools import Tool, ToolArgumentsError
from .types import (
    Availability,
    ChatRequest,
    ChatResponse,
    Cost,
    EmbedResponse,
    Health,
    ImagePart,
    KeepAlive,
    Message,
    Metric,
    ModelSpec,
    Price,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)

try:
    __version__ = version("modelherd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "Agent",
    "AgentSettings",
    "AllModelsFailedError",
    "AuthenticationError",
    "Availability",
    "BadRequestError",
    "BadResponseError",
    "BudgetExceededError",
    "CacheMissError",
    "CacheTier",
    "CallTimeoutError",
    "ChatRequest",
    "ChatResponse",
    "CircuitOpenError",
    "ConfigError",
    "ConnectionDroppedError",
    "ConnectionFailedError",
    "ConnectionRefusedByServerError",
    "Cost",
    "EmbedResponse",
    "Health",
    "Herd",
    "HerdError",
    "HostNotFoundError",
    "ImagePart",
    "IncompleteToolCallError",
    "InvalidOptionError",
    "KeepAlive",
    "Message",
    "Metric",
    "MissingDependencyError",
    "Model",
    "ModelNotFoundError",
    "ModelSpec",
    "OverloadedError",
    "PluginLoadError",
    "Price",
    "ProviderError",
    "ProviderSettings",
    "ProviderUnavailableError",
    "QuotaExceededError",
    "RateLimitError",
    "ReasoningDelta",
    "SamplingOptions",
    "StreamEvent",
    "TextDelta",
    "TextPart",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "UnknownModelError",
    "Usage",
    "__version__",
    "hookimpl",
]
