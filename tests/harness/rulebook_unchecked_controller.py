# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-rulebook's own command line (run with .cache/eda-venv's python), with one call left out: the
controller is not asked for its version at start-up.

ansible-rulebook 1.3.2 refuses to start a rulebook with a run_job_template unless the controller answers
that question, and no AWX can run where this collection is tested. Everything after it is ansible-rulebook
as shipped: the rulebook's validation, its webhook source, the rules, and run_job_template, which asks the
controller URL it was given for the job template by name, and fails there when nothing listens.
"""

from __future__ import annotations

import sys

from ansible_rulebook import cli
from ansible_rulebook.job_template_runner import job_template_runner


async def _version_not_asked() -> dict[str, str]:
    return {"version": "not asked (no controller in this test)"}


if __name__ == "__main__":
    job_template_runner.get_config = _version_not_asked
    sys.exit(cli.main())
