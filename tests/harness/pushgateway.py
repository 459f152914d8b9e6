# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Debian's prometheus-pushgateway on loopback, started by the test and stopped by its PID."""

from __future__ import annotations

import pathlib
import re

import requests

from .monitoring import Service, _spawn, _wait_http
from .registry import free_port


def start_pushgateway(workdir: pathlib.Path) -> Service:
    """A Pushgateway on a free 127.0.0.1 port, keeping nothing on disk.

    Debian's build persists to /var/lib/prometheus/pushgateway.data by default: an empty
    --persistence.file keeps this one's groups in memory, so it starts empty and shares nothing.
    """
    port = free_port()
    service = _spawn("pushgateway", [
        "prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=",
    ], workdir / "pushgateway.log", port)
    return _wait_http(service, "/-/ready")


def samples(service: Service, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of one metric the Pushgateway exposes, keyed by its labels.

    An empty label is no label to Prometheus; the Pushgateway adds instance="" to every group without one.
    """
    found = {}
    for line in requests.get(service.url + "/metrics", timeout=10).text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match:
            labels = frozenset((key, value) for key, value in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"',
                                                                         match.group(1) or "") if value)
            found[labels] = float(match.group(2))
    return found
