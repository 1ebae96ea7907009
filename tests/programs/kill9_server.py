"""A server for the kill -9 campaign (tests/test_kill9.py): what a real deployment's main server has.

Events enabled, the echo service proxied (so `srv.proxy_register` can be called), and one user config
item, `kill9-value`. Usual server command line (`-p`, `-w`, `--system`, `--user`, `-c`); prints the
port it listens on, alone on a line on stdout, once every service is loaded, then serves until killed
(or SIGINT/SIGTERM).
"""

from __future__ import annotations

import logging
import sys

from grpc_helper import Config, RpcCliParser, RpcServer
from grpc_helper_samples.echo import descriptor

VALUE = Config("kill9-value", "What the campaign's config writer sets", "initial")


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    args = RpcCliParser("kill -9 campaign server").with_rpc_args(0).parse()
    srv = RpcServer(
        args.port, [descriptor(proxy=True)], args.folders, args.config, user_items=[VALUE], with_events=True
    )
    print(srv.port, flush=True)  # the constructor returns once every service is loaded: serving
    srv.wait_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
