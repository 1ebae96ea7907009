"""Debug dumps: every thread's stack and every pending call, written on SIGUSR2."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

from grpc_helper.server.dispatch import PENDING


def render_dump(server_id: int) -> str:
    now = time.time()
    lines = [f"RpcServer debug dump, {datetime.now().isoformat(timespec='seconds')}", ""]
    names = {t.ident: t.name for t in threading.enumerate()}
    frames = sys._current_frames()
    lines.append(f"== Threads ({len(frames)}) ==")
    for ident, frame in frames.items():
        lines.append(f"\n-- Thread {names.get(ident, '?')} ({ident}) --")
        lines.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
    calls = [(ident, c) for ident, c in list(PENDING.items()) if c.server == server_id]
    lines.append(f"\n== Pending calls ({len(calls)}) ==")
    for ident, call in calls:
        lines.append(f"\n-- {call.method} (thread {names.get(ident, ident)}, for {now - call.start:.3f}s) --")
        lines.append(f"peer: {call.context.peer()}")
        lines.append(f"metadata: {dict(call.metadata)}")
        lines.append("request: " + str(call.request).strip().replace("\n", "\n  "))
    return "\n".join(lines) + "\n"


def write_dump(folder: Path, server_id: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"RpcServerDump-{datetime.now():%Y%m%d%H%M%S}.txt"
    path.write_text(render_dump(server_id), encoding="utf-8")
    return path
