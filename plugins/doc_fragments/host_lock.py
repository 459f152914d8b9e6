# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host-wide lock options of the modules that read or change the registry's storage.

The argument spec is HOST_LOCK_ARGUMENT_SPEC in plugins/module_utils/_host_lock_options.py: keep the two in step.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  lock_path:
    description:
      - Host-wide lock file shared by the storage scan, the GC guard and tag retention (modules and the host command
        line alike), so two of them never run on the registry host at once.
      - Defaults to the environment variable C(REGISTRY_TOOLS_LOCK_FILE), then C(/run/lock/selfhosted-registry-tools.lock).
    type: path
  lock_timeout:
    description:
      - Seconds to wait for another run to release the lock; then the module fails with one sentence naming it
        and runs nothing.
    type: int
    default: 300
"""
