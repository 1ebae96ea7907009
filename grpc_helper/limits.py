"""Bounds on what a request may carry, checked by the default services before any work.

Beyond a bound, the request is refused with ERROR_PARAM_INVALID, in milliseconds, and nothing is
changed. They are documented in the README's reliability section; the numbers are generous for
any real use and small enough that no single request can cost the server much.
"""

from __future__ import annotations

MAX_NAMES = 1000
"""Items in one repeated field of a request: `Filter.names`, `ConfigUpdate.items`,
`LoggerUpdate.items`, `EventFilter.names`, `ProxyRegisterRequest.names`, `Event.properties`."""

MAX_NAME_LENGTH = 256
"""Characters in one name: a service, config item, logger, event or event property name."""

MAX_VALUE_LENGTH = 64 * 1024
"""Characters in one value: a config value, an event property value, a registered version or host."""

MAX_QUOTED = 200
"""Characters of a request's input quoted back in an error message or a log line (then `...`)."""


def quote(value: object, limit: int = MAX_QUOTED) -> str:
    """`repr(value)` cut to `limit` characters (then `...`): how errors and logs quote client input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
