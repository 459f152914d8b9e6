# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry connection options, documented once (argument spec: plugins/module_utils/_registry_options.py)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  registry_url:
    description:
      - Base URL of the registry, for example V(https://registry.example.com:5000).
      - Only the scheme, host and port are used. The URL must not contain credentials.
    type: str
    required: true
  username:
    description:
      - User name for basic authentication or for the token service the registry points to.
      - Leave unset for anonymous access.
      - Falls back to the environment variable E(REGISTRY_USERNAME).
    type: str
  password:
    description:
      - Password for O(username).
      - Falls back to the environment variable E(REGISTRY_PASSWORD).
      - Never shown in output, results, errors or reports.
    type: str
  validate_certs:
    description:
      - Verify the registry's TLS certificate.
      - Turn this off only for a throwaway test registry.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file with the CA certificates that sign the registry's certificate.
      - Used instead of the system trust store when O(validate_certs=true).
    type: path
  timeout:
    description:
      - Seconds each HTTP request may take in all (connecting, the headers and the body together), so a server
        that answers a byte at a time cannot stall the run. A request that runs out of time is not retried.
    type: int
    default: 30
requirements:
  - requests >= 2.28 on the host that runs the module (usually the controller)
"""
