# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host-wide lock options, documented once in plugins/doc_fragments/host_lock.py: keep the two in step."""

from __future__ import annotations

import typing as t

HOST_LOCK_ARGUMENT_SPEC: t.Dict[str, t.Dict[str, t.Any]] = dict(
    lock_path=dict(type="path"),
    lock_timeout=dict(type="int", default=300),
)
