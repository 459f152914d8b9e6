# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attribute fragments shared by the collection's modules."""

from __future__ import annotations


class ModuleDocFragment:
    # Modules that only read: the same work runs under --check, nothing is ever changed.
    READ_ONLY = r"""
attributes:
  check_mode:
    support: full
    details:
      - The module only reads, so it does exactly the same work in check mode and reports the same result.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description:
      - When run twice in a row with the same arguments, the second run reports no change.
    support: full
    details:
      - Reading changes nothing; C(changed) is always C(false).
"""
