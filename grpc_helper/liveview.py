"""What the operator CLI's live commands show: `stat` and `top` (the servers' `srv.stat` windows, as a table of
rates, success rates and latencies) and `channelz` (main's channels to its backends, from grpcio-channelz).

Only formatting and collecting here, over clients the CLI (`ctl`) makes: the numbers are the servers' own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from grpc_helper.api import Filter, MethodStat, MultiServiceInfo, StatRequest
from grpc_helper.client import RpcClient
from grpc_helper.errors import RpcException

__all__ = [
    "ChannelRow",
    "StatRow",
    "channel_rows",
    "endpoint_text",
    "fit",
    "stat_lines",
    "stat_rows",
    "stat_table",
]

# --- stat / top ---


@dataclass(frozen=True)
class StatRow:
    """One method's figures over the window, as one server measured them (`endpoint`: which endpoint of a
    proxied service, through main; "" for the server asked); `error`: why an endpoint's could not be had."""

    service: str
    method: str
    endpoint: str = ""
    seconds: float = 0.0
    calls: int = 0
    failures: int = 0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    error: str = ""

    @property
    def rate(self) -> float:
        """Calls per second over the window."""
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def success(self) -> float | None:
        """The share of calls that succeeded (None without calls)."""
        return (self.calls - self.failures) / self.calls if self.calls else None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate, "success": self.success}


def _row(item: MethodStat, endpoint: str = "", service: str = "") -> StatRow:
    """`item` as a row; `service`: the name to show it under (main's, for an endpoint's rows)."""
    return StatRow(
        service or item.service,
        item.method,
        endpoint,
        item.seconds,
        item.calls,
        item.failures,
        item.p50,
        item.p95,
        item.p99,
    )


def endpoint_text(host: str, port: int) -> str:
    """An endpoint as `route-endpoint` takes it: "host:port" ("[v6]:port"; ":port" for main's own host)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def stat_rows(
    client: RpcClient,
    request: StatRequest,
    timeout: float,
    routed: Callable[[str, str], RpcClient] | None = None,
) -> list[StatRow]:
    """The figures of the server `client` reaches; with `routed` (main: `--endpoints`), then those of every
    endpoint of each proxied service, each asked through main's routing (`routed(service, endpoint)`: a client
    whose calls carry `route-service` and `route-endpoint`), for that service only."""
    rows = [_row(item) for item in client.srv.stat(request, timeout=timeout).items]
    if routed is None:
        return rows
    wanted = set(request.names)
    info: MultiServiceInfo = client.srv.info(Filter(), timeout=timeout)
    for service in info.items:
        if not service.is_proxy or (wanted and service.name not in wanted):
            continue
        for e in service.endpoints:
            endpoint = endpoint_text(e.host, e.port)
            one = StatRequest(names=[service.name], window=request.window, idle=request.idle)
            try:
                answer = routed(service.name, endpoint).srv.stat(one, timeout=timeout)
            except RpcException as exc:  # unreachable, an older server without `stat`...: said on its row
                rows.append(StatRow(service.name, "", endpoint, error=str(exc).splitlines()[0]))
                continue
            # under main's name of the service (a dynamic one's backend names it its own way)
            rows.extend(_row(item, endpoint, service.name) for item in answer.items)
    return sorted(rows, key=lambda r: (r.service, r.method, r.endpoint))


def duration_text(seconds: float) -> str:
    """A latency, short: 850us, 12.3ms, 1.25s."""
    if seconds <= 0:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g}ms"
    return f"{seconds:.3g}s"


def rate_text(rate: float) -> str:
    """Calls per second, short: 0.33, 12.3, 1234, 12.3k."""
    if rate >= 10_000:
        return f"{rate / 1000:.1f}k"
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.2g}" if rate < 1 else f"{rate:.1f}"


def success_text(success: float | None) -> str:
    if success is None:
        return "-"
    return "100%" if success == 1 else f"{success * 100:.1f}%"


def stat_table(rows: Sequence[StatRow], *, endpoints: bool) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, cells, notes) of `rows`: `endpoints` adds the ENDPOINT column; `notes`: a line per endpoint
    whose figures could not be had (said under the table)."""
    headers = [
        "SERVICE",
        "METHOD",
        *(["ENDPOINT"] if endpoints else []),
        "CALLS",
        "RPS",
        "SUCCESS",
        "P50",
        "P95",
        "P99",
    ]
    cells, notes = [], []
    for r in rows:
        if r.error:
            notes.append(f"{r.service} at {r.endpoint}: {r.error}")
            continue
        latency = [duration_text(r.p50), duration_text(r.p95), duration_text(r.p99)]
        where = [r.endpoint or "-"] if endpoints else []
        cells.append([r.service, r.method, *where, str(r.calls), rate_text(r.rate), success_text(r.success), *latency])
    return headers, cells, notes


def stat_lines(rows: Sequence[StatRow], stamp: str) -> Iterator[str]:
    """`rows` as plain lines, one per row, each with `stamp` (what `top` prints when not on a terminal)."""
    if not rows:
        yield f"{stamp} (no calls in the window)"
    for r in rows:
        where = f" endpoint={r.endpoint}" if r.endpoint else ""
        if r.error:
            yield f"{stamp} {r.service}{where} error={r.error}"
            continue
        yield (
            f"{stamp} {r.service}/{r.method}{where} calls={r.calls} rps={rate_text(r.rate)}"
            f" success={success_text(r.success)} p50={duration_text(r.p50)} p95={duration_text(r.p95)}"
            f" p99={duration_text(r.p99)}"
        )


def fit(
    headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, shrinkable: int, *, tails: int | None = None
) -> list[list[str]]:
    """`headers` and `rows` with the first `shrinkable` columns (the names) cut, so that the table (columns
    separated by two spaces) fits in `width` characters when it can (the numbers always stay whole). A cut cell
    ends with "~", or starts with it in column `tails` (an endpoint: its port is what tells replicas apart)."""
    table = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        widest = max(range(shrinkable), key=lambda i: widths[i])
        if widths[widest] <= max(len(headers[widest]), 4):
            break  # nothing left to cut
        widths[widest] -= 1
        excess -= 1
    return [
        [_cut(cell, widths[i], tail=i == tails) if i < shrinkable else cell for i, cell in enumerate(row)]
        for row in table
    ]


def _cut(cell: str, width: int, *, tail: bool) -> str:
    if len(cell) <= width:
        return cell
    return "~" + cell[len(cell) - width + 1 :] if tail else cell[: width - 1] + "~"


# --- channelz ---

_SCHEME = re.compile(r"^dns:/{0,3}")  # gRPC may name a plain host:port target with its default scheme


def _normal(target: str) -> str:
    return _SCHEME.sub("", target)


@dataclass(frozen=True)
class ChannelRow:
    """One subchannel (a connection to one server) of one of the process's top channels."""

    service: str  # the proxied service(s) whose channel it is ("-" for another channel of the process)
    channel: str  # the channel's target
    subchannel: str  # the subchannel's target: one server's address
    state: str
    started: int
    succeeded: int
    failed: int
    sockets: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def cells(self) -> list[str]:
        return [
            self.service,
            self.channel,
            self.subchannel,
            self.state,
            str(self.started),
            str(self.succeeded),
            str(self.failed),
            str(self.sockets),
        ]


CHANNEL_HEADERS = ["SERVICE", "CHANNEL", "SUBCHANNEL", "STATE", "STARTED", "OK", "FAILED", "SOCKETS"]
# Pages of top channels read at most (channelz pages itself; a process has a few dozen channels)
_MAX_PAGES = 100


def channel_services(info: MultiServiceInfo) -> dict[str, str]:
    """Main's channel targets (normalized) -> the proxied services they reach, from its `srv.info`."""
    names: dict[str, list[str]] = {}
    for service in info.items:
        if not service.is_proxy:
            continue
        targets = {service.channel_target, *(e.channel_target for e in service.endpoints)} - {""}
        for target in targets:
            names.setdefault(_normal(target), []).append(service.name)
    return {target: ",".join(sorted(set(services))) for target, services in names.items()}


def channel_rows(stub: Any, services: dict[str, str], timeout: float, *, everything: bool) -> list[ChannelRow]:
    """A row per subchannel of the process's top channels that reach a proxied service (`services`: from
    `channel_services`), or of all of them with `everything`; `stub`: a grpcio-channelz `ChannelzStub`'s
    methods (an `RpcClient` stub)."""
    from grpc_channelz.v1 import channelz_pb2

    state_name = channelz_pb2.ChannelConnectivityState.State.Name
    rows = []
    for channel in _top_channels(stub, timeout):
        target = channel.data.target
        service = services.get(_normal(target))
        if service is None and not everything:
            continue
        for ref in channel.subchannel_ref:
            sub = stub.GetSubchannel(
                channelz_pb2.GetSubchannelRequest(subchannel_id=ref.subchannel_id), timeout=timeout
            ).subchannel
            data = sub.data
            rows.append(
                ChannelRow(
                    service or "-",
                    target,
                    data.target,
                    state_name(data.state.state),
                    data.calls_started,
                    data.calls_succeeded,
                    data.calls_failed,
                    len(sub.socket_ref),
                )
            )
        if not channel.subchannel_ref:
            data = channel.data
            state = state_name(data.state.state)
            rows.append(ChannelRow(service or "-", target, "-", state, data.calls_started, data.calls_succeeded,
                                   data.calls_failed, 0))  # fmt: skip
    return sorted(rows, key=lambda r: (r.service == "-", r.service, r.channel, r.subchannel))


def _top_channels(stub: Any, timeout: float) -> Iterable[Any]:
    from grpc_channelz.v1 import channelz_pb2

    start = 0
    for _ in range(_MAX_PAGES):
        page = stub.GetTopChannels(channelz_pb2.GetTopChannelsRequest(start_channel_id=start), timeout=timeout)
        yield from page.channel
        if page.end or not page.channel:
            return
        start = max(c.ref.channel_id for c in page.channel) + 1


def now_stamp() -> str:
    """The time of a `top` refresh, as its plain lines show it (UTC, ISO 8601)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
