"""`[plugins.serve]`: where `herd serve` listens, where keys live, and its limits."""

from __future__ import annotations

from modelherd.lazy_model import LazyModel
from pydantic import ConfigDict, Field, field_validator

DOCS = "docs/serve.md"


class ServeSettings(LazyModel):
    """`[plugins.serve]` (every field is also a `herd serve` option where it makes sense)."""

    model_config = ConfigDict(extra="forbid")

    #: loopback by default: exposing the gateway is a decision, not an accident
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    #: the API-key file (hashes only); default: the user data dir / serve-keys.json
    keys_path: str | None = None
    #: share API keys through Redis (replicas on several hosts); None = the keys file
    redis_url: str | None = None
    #: env var holding the Redis password (never in the URL)
    redis_password_env: str | None = None
    key_prefix: str = "herd:serve"
    #: seconds a key looked up in Redis (or the keys file) is trusted before re-reading:
    #: a revocation reaches every replica within this time
    key_cache_s: float = Field(1.0, ge=0)
    #: the largest request body accepted, bytes (413 beyond)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    #: the longest request line / header field, bytes (431 beyond)
    max_header_bytes: int = Field(16 * 1024, gt=0)
    #: a client that does not finish sending its request within this many seconds is dropped:
    #: the request head (counted from the connection's opening or its last response; an
    #: idle keep-alive connection is closed then too), and the body (408)
    client_timeout_s: float = Field(30.0, gt=0)
    #: on SIGTERM, how long in-flight calls and streams may take to finish
    drain_s: float = Field(30.0, ge=0)
    #: Prometheus label values kept per label (models, tenants); the rest are "other"
    label_limit: int = Field(64, ge=1)
    #: TLS served by the gateway itself (or put a reverse proxy in front: docs/deploy.md)
    certfile: str | None = None
    keyfile: str | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        from urllib.parse import urlsplit

        if urlsplit(value).password:
            raise ValueError(
                "holds a password — remove it from the URL and set redis_password_env to the "
                "name of an environment variable that holds it"
            )
        return value
