"""Bounds on what a request may carry, checked by the default services before any work.

Beyond a bound, the request is refused with ERROR_PARAM_INVALID, in milliseconds, and nothing is
changed. They are documented in the README's reliability section; the numbers are generous for
any real use and small enough that no single request can cost the server much.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from grpc_helper.api import ResultCode
from grpc_helper.errors import RpcException

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
    return cut(repr(value), limit)


def cut(text: str, limit: int = MAX_QUOTED) -> str:
    """`text` cut to `limit` characters (then `...`): for texts already formatted, e.g. a list of names."""
    return text if len(text) <= limit else text[:limit] + "..."


def quote_names(names: Iterable[str]) -> str:
    """Names joined by ", ", cut to `MAX_QUOTED` characters: how errors and logs list client-given names."""
    return cut(", ".join(names))


# String fields holding names: MAX_NAME_LENGTH, others MAX_VALUE_LENGTH
_NAME_FIELDS = frozenset({"name", "names", "grpc_services"})


def check_request(request: Message) -> None:
    """Check every field of a default service's request against the bounds of this module, recursively:
    at most `MAX_NAMES` items per repeated field, `MAX_NAME_LENGTH` characters per name (`name`/`names`
    fields), `MAX_VALUE_LENGTH` per other string. ERROR_PARAM_INVALID beyond; cost linear in the request."""
    for field, value in request.ListFields():
        repeated = field.is_repeated
        values = value if repeated else [value]
        if repeated and len(values) > MAX_NAMES:
            raise RpcException(
                f"Too many items in {field.name}: {len(values)} (at most {MAX_NAMES})", ResultCode.ERROR_PARAM_INVALID
            )
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in values:
                check_request(item)
        elif field.type == FieldDescriptor.TYPE_STRING:
            limit = MAX_NAME_LENGTH if field.name in _NAME_FIELDS else MAX_VALUE_LENGTH
            for text in values:
                if len(text) > limit:
                    raise RpcException(
                        f"Too long {field.name}: {quote(text)} ({len(text)} characters, at most {limit})",
                        ResultCode.ERROR_PARAM_INVALID,
                    )
