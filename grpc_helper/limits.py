"""Bounds on what a request may carry, checked by the default services before any work.

Beyond a bound, the request is refused with ERROR_PARAM_INVALID, in milliseconds, and nothing is
changed. They are documented in the README's reliability section; the numbers are generous for
any real use and small enough that no single request can cost the server much.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

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

LOG_LINES_PER_SECOND = 10
"""Lines a second one kind of refusal may log (`LogBudget`): a flood of refused calls can't flood the log."""


class LogBudget:
    """At most `per_second` log lines a second for one kind of message (a refusal: callers decide how many
    there are); the ones left out are counted, and the next line logged says how many."""

    def __init__(self, per_second: int = LOG_LINES_PER_SECOND, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._second = -1.0  # the start of the current second
        self._used = 0  # lines logged in it
        self._left_out = 0  # lines not logged since the last one logged

    def take(self) -> int | None:
        """None: don't log this one (counted); else log it, saying this many were left out before it."""
        now = self._clock()
        with self._lock:
            if now - self._second >= 1.0:
                self._second, self._used = now, 0
            if self._used >= self.per_second:
                self._left_out += 1
                return None
            self._used += 1
            left_out, self._left_out = self._left_out, 0
            return left_out


def left_out_note(left_out: int) -> str:
    """What a log line taken from a `LogBudget` adds: "" or "; 12 more not logged"."""
    return f"; {left_out} more not logged" if left_out else ""


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
