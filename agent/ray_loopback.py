"""``python -m agent.ray_loopback start …``: ``ray start`` for a Ray cluster kept on loopback.

Ray 2.60 binds its GCS, raylet, object manager and agents to 127.0.0.1 only when the node's IP
address is exactly 127.0.0.1; any other node IP makes them listen on every interface ([::]). But
``ray start`` rewrites a loopback ``--node-ip-address`` (and a loopback ``--address``) to the
machine's interface address, unless Ray clusters are disabled
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), and with clusters disabled it refuses to start a node
that joins a head. So: with that variable set to 0 (every Ray process below, and any ``ray.init``
in a job, then keeps 127.0.0.1 as it is), this runs Ray's own CLI with the refusal lifted for this
one process, and loopback addresses left as given. ``coop up`` starts its head and its agent's node
this way (see coop/cli/up.py); on a real cooperative Ray listens on the overlay address instead.
"""

from __future__ import annotations

import os
import sys

LOOPBACK = ("127.0.0.1", "localhost")
DISABLED = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray's own switch: node IPs stay loopback


def main() -> int:
    os.environ.update(DISABLED)  # before Ray reads it: the processes `ray start` spawns inherit it
    from ray._private import ray_constants, services
    from ray.scripts.scripts import main as ray_main

    resolve = services.resolve_ip_for_localhost

    def keep_loopback(host: str) -> str:
        return host if host in LOOPBACK else str(resolve(host))

    services.resolve_ip_for_localhost = keep_loopback
    ray_constants.ENABLE_RAY_CLUSTER = True  # only `ray start`'s check for a worker node reads it here
    sys.argv[0] = "ray"
    ray_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
