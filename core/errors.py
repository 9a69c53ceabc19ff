"""Typed errors. Each message says what happened and what to do next.

The retry policy reads two attributes, never the class name:
`retryable` (try the same model again, after `retry_after` seconds if set) and
`fallback_ok` (moving to the alias's next fallback may help).
Messages must never contain secrets: build them from names, not values.
"""

from __future__ import annotations

from collections.abc import Sequence


class HerdError(Exception):
    """Base of every error modelherd raises on purpose."""

    retryable: bool = False
    fallback_ok: bool = True
    #: process exit code the CLI uses for this error
    exit_code: int = 1

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ConfigError(HerdError):
    """plugins.toml (or an option) is wrong. Never retried; exit code 2."""

    fallback_ok = False
    exit_code = 2


class UnknownModelError(ConfigError):
    """An alias that is neither in plugins.toml nor a provider/model pair."""


class PluginLoadError(HerdError):
    """A plugin failed to import or register (only raised with --strict)."""

    exit_code = 2


class MissingDependencyError(HerdError):
    """An optional package is not installed; the message gives the pip command."""

    def __init__(self, package: str, extra: str, what: str) -> None:
        super().__init__(
            f"{what} needs the '{package}' package — install it with: "
            f'pip install "modelherd[{extra}]"'
        )


class ProviderUnavailableError(HerdError):
    """The provider cannot be reached or used (no key, server down, no SDK)."""


class AuthenticationError(HerdError):
    """The provider refused the API key."""


class ModelNotFoundError(HerdError):
    """The provider does not know this model id."""


class BadRequestError(HerdError):
    """The provider rejected the request as invalid; retrying will not help."""

    fallback_ok = False


class InvalidOptionError(BadRequestError):
    """A per-call option this provider does not take, or a value out of its range
    (`--max-tokens -5`, `temperature=1e9`). Caught before anything is sent; exit code 2
    like any other usage mistake."""

    exit_code = 2


class RateLimitError(HerdError):
    """The provider said slow down (HTTP 429 / 529)."""

    retryable = True


class ProviderError(HerdError):
    """The provider failed on its side (HTTP 5xx)."""

    retryable = True


class ConnectionFailedError(HerdError):
    """The connection failed or dropped before an answer arrived."""

    retryable = True


class HostNotFoundError(ConnectionFailedError):
    """The host name in the URL does not resolve (DNS). Not retried: a typo in base_url
    does not heal in a second (a temporary resolver failure, EAI_AGAIN, is retried)."""

    retryable = False


class ConnectionRefusedByServerError(ConnectionFailedError):
    """The host answered, but nothing listens on that port (connection refused)."""


class ConnectionDroppedError(ConnectionFailedError):
    """The server was reached but the connection broke before the whole answer arrived
    (a reset, or a body shorter than it announced)."""


class CallTimeoutError(HerdError):
    """No answer within the call's timeout."""

    retryable = True


class BadResponseError(HerdError):
    """The provider answered with something that is not a valid response."""

    retryable = True


class CacheMissError(HerdError):
    """`cache="only"` was asked and no tier holds the answer."""

    fallback_ok = False


class QuotaExceededError(HerdError):
    """A tenant went over one of its limits; `retry_after` says when it resets."""

    fallback_ok = False


class BudgetExceededError(QuotaExceededError):
    """A tenant's or agent's money budget is spent (docs/cost.md).

    `budget` names it ("tenant 'alice' daily"), `resets_at` is the epoch second it
    resets at, and `retry_after` the seconds until then.
    """

    def __init__(self, message: str, *, budget: str, resets_at: float, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.budget = budget
        self.resets_at = resets_at


class TenantRequiredError(ConfigError):
    """Tenants are configured and the call names none (and no default_tenant is set)."""


class UnknownTenantError(ConfigError):
    """The call names a tenant that is not configured and unknown_tenant = "reject"."""


class OverloadedError(HerdError):
    """The scheduler shed this call to protect higher-priority work."""

    fallback_ok = False


class CircuitOpenError(HerdError):
    """The circuit breaker for this model is open; the fallback chain is tried."""


class AllModelsFailedError(HerdError):
    """Every model in the alias's fallback chain failed; `errors` holds each one."""

    def __init__(self, alias: str, errors: Sequence[tuple[str, BaseException]]) -> None:
        self.errors = list(errors)
        parts = "; ".join(f"{name}: {err}" for name, err in self.errors)
        last = self.errors[-1][1] if self.errors else None
        retry_after = getattr(last, "retry_after", None)
        super().__init__(f"every model for '{alias}' failed — {parts}", retry_after=retry_after)
