# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Woodpecker CI connection options, documented once (argument spec: plugins/modules/woodpecker_pipeline.py)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  server_url:
    description:
      - Address of the Woodpecker server, with its root path if it has one, for example
        V(https://ci.example.com) or V(https://example.com/woodpecker).
      - Woodpecker 1.0 or later; older servers are detected and refused with a message saying so.
      - Falls back to the environment variable E(WOODPECKER_SERVER).
    type: str
    required: true
  token:
    description:
      - Personal access token from the Woodpecker user settings.
      - Reading needs pull permission on the repository; trigger, restart and cancel need push permission.
        Woodpecker answers 404, not 403, when the permission is missing.
      - Sent only in the C(Authorization) header, never in a URL (Woodpecker turns query parameters of a
        restart into build environment variables). Never shown in output, results or errors.
      - Falls back to the environment variable E(WOODPECKER_TOKEN).
    type: str
    required: true
  validate_certs:
    description:
      - Verify the Woodpecker server's TLS certificate.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file with the CA certificates that sign the server's certificate, used instead of the system
        trust store when O(validate_certs=true).
    type: path
  timeout:
    description:
      - Seconds to wait for each HTTP request (connect and read).
      - Reads are retried three times with backoff on connection errors, timeouts and 5xx answers (honouring
        C(Retry-After) up to 30 seconds). A trigger, restart or cancel is retried only when the connection failed
        before the request was sent, because sending it twice could start two pipelines.
    type: int
    default: 30
requirements:
  - requests on the host that runs the module (usually the controller)
"""
