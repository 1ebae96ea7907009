"""Debug dumps: every thread's stack and every pending call, written on SIGUSR2."""

from __future__ import annotations

import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

from grpc_helper.calls import PENDING
from grpc_helper.logs import PRIVATE_FOLDER_MODE, private_opener
from grpc_helper.proxy.forward import IN_FLIGHT
from grpc_helper.threads import current_frames


def render_dump(server_id: int) -> str:
    """Thread stacks, then a `Pending RPC calls:` section as grpc-helper 2.x wrote it: one line per
    call of this server, `Thread 0x<ident, 16 hex digits> -- <the call's entry trace>`; before it, the
    forwarded calls in flight (`Forwarded calls in flight:`): method, caller, backend endpoint and age."""
    lines = [f"RpcServer debug dump, {datetime.now().isoformat(timespec='seconds')}", ""]
    names = {t.ident: t.name for t in threading.enumerate()}
    frames = current_frames()
    lines.append(f"== Threads ({len(frames)}) ==")
    for ident, frame in frames.items():
        lines.append(f"\n-- Thread {names.get(ident, '?')} (0x{ident:016x}) --")
        lines.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
    # Forwarded calls (main's proxy) are not manager calls: listed apart, with where they went (before the
    # pending calls, which end the dump as in 2.x)
    now = time.time()
    lines.extend(["", "Forwarded calls in flight:"])
    lines.extend(
        f"Thread 0x{ident:016x} -- {call.method} from {call.caller} to {call.backend}, {now - call.start:.1f}s old"
        for ident, call in list(IN_FLIGHT.items())
    )
    lines.extend(["", "Pending RPC calls:"])
    lines.extend(
        f"Thread 0x{ident:016x} -- {call.entry_trace()}"
        for ident, call in list(PENDING.items())
        if call.server == server_id
    )
    return "\n".join(lines) + "\n"


def write_dump(folder: Path, server_id: int) -> Path:
    """Write a dump in `folder`: the file `0600` (in the `0700` logs folder), as it shows the server's internals
    (call traces carry no metadata but the caller's identity, and bodies cut short: `calls.trace_message`)."""
    folder.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)  # the logs folder: made 0700 by RollingLogs
    path = folder / f"RpcServerDump-{datetime.now():%Y%m%d%H%M%S}.txt"
    with open(path, "w", encoding="utf-8", opener=private_opener) as f:
        f.write(render_dump(server_id))
    return path
