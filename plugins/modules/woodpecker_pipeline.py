#!/usr/bin/python
# Copyright: selfhosted.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: woodpecker_pipeline
short_description: Trigger, restart, cancel or watch a Woodpecker CI pipeline
version_added: 0.1.0
description:
  - Rebuilds through Woodpecker CI (1.0 or later), for example the CI image whose registry manifests were lost.
    It starts a manual pipeline on a branch, restarts a pipeline, cancels one, or reports one.
  - Optionally waits until the pipeline finishes and then fails the task when it did not succeed, naming the
    failing step and showing the last lines of its log.
  - Handles the Woodpecker answers that are easy to misread. A trigger answered C(204 Pipeline-Filtered) (no
    workflow runs for event C(manual)) and a trigger whose configuration could not be fetched both fail with a
    message saying so. A restart of a C(blocked) pipeline is refused. A restart that hits the server's
    C(pipeline definition not found) bug falls back to a fresh manual trigger on the same branch when
    O(fallback_to_trigger=true).
  - When the answer to a trigger or restart is lost, cut short or too slow, the server may have started the
    pipeline, so the request is never sent again. A restart then looks for the pipeline restarted from the same
    number, and a trigger with O(idempotency_key) for the pipeline carrying the key; one that is found is
    returned with a warning. Otherwise the task fails saying that the pipeline may exist and that running it
    again (with the same O(idempotency_key) for a trigger) picks it up instead of starting a second one.
  - A restart answered 400 or 500 is explained from the server's text and the pipelines' state. It names a
    pipeline that is C(blocked) or C(declined), a configuration that does not parse or lint (the server stores
    the new pipeline in C(error) anyway, and it is returned), or a configuration service that failed.
  - On 1.x servers, which do not send C(Pipeline-Filtered), a 204 to a trigger that stored no pipeline is
    reported as filtered.
  - Reads timestamps in both the v1/v2 (C(created_at), C(start_time)) and v3 (C(created), C(started))
    spellings and errors both as v1 C(error) and v2+ C(errors[]).
extends_documentation_fragment:
  - selfhosted.registry.woodpecker_connection
  - ansible.builtin.action_common_attributes
options:
  repo:
    description:
      - Repository as V(owner/name), looked up on the server.
      - Exactly one of O(repo) and O(repo_id) is required.
    type: str
  repo_id:
    description:
      - Numeric Woodpecker repository id (the number in the repository's UI address).
    type: int
  action:
    description:
      - V(trigger) starts a manual pipeline on O(branch) with O(variables).
      - V(restart) restarts O(pipeline). Woodpecker answers with a new pipeline that has a new number and
        whose C(parent) is the restarted one. Without O(pipeline), the newest pipeline on O(branch) is
        restarted if it failed (C(failure), C(error) or C(killed)); if it did not fail, nothing is restarted and
        it is returned with RV(reused=true). With O(force=true), the newest failed pipeline on the branch is
        restarted even when newer pipelines exist.
      - V(cancel) cancels O(pipeline); a pipeline that has already finished is left alone (C(changed=false)).
      - V(status) reads O(pipeline), or the newest pipeline on O(branch) without it.
    type: str
    choices: [trigger, restart, cancel, status]
    default: trigger
  branch:
    description:
      - Branch for V(trigger), and the branch searched by V(restart) and V(status) without O(pipeline).
      - Defaults to the repository's default branch.
    type: str
  variables:
    description:
      - Pipeline variables for a manual trigger (strings; numbers and booleans are converted).
      - For a restart that falls back to a trigger they are added to the original pipeline's variables.
      - Woodpecker shows them in the UI to anyone who can read the repository, so never pass secrets here.
    type: dict
    default: {}
  pipeline:
    description:
      - Pipeline number in the repository (the number in the UI, not the internal id).
      - Required for V(cancel).
    type: int
  fallback_to_trigger:
    description:
      - When a restart fails because the server lost the pipeline's definition (a pipeline that errored before its
        configuration was stored; the server answers 200 with a new pipeline already in C(error), or 404 or 500),
        start a fresh manual pipeline on the same branch with the original variables instead.
      - The fresh pipeline carries the variable C(SELFHOSTED_REGISTRY_RESTART_OF) with the restarted number, so
        running the same restart again finds it instead of starting another.
      - With V(false) the task fails and says that this option would help.
    type: bool
    default: false
  wait:
    description:
      - Poll until the pipeline has finished (or is C(blocked) waiting for approval).
      - The task fails when the pipeline ends unsuccessfully (any status but C(success)), with the failing step and
        the last O(log_lines) lines of its log in the message; when it is blocked; and when O(wait_timeout) runs
        out first. The pipeline keeps running on the server in the last case.
      - For V(cancel), waits until the pipeline has stopped and does not fail because it was canceled.
      - An unknown status (from a newer server) counts as not finished.
    type: bool
    default: false
  wait_timeout:
    description:
      - Seconds to wait with O(wait=true).
    type: int
    default: 1800
  poll_interval:
    description:
      - Seconds between two reads of the pipeline with O(wait=true).
    type: float
    default: 10
  log_lines:
    description:
      - How many of the last log lines of the failing step to return (and show in the failure message).
      - V(0) does not read the log.
    type: int
    default: 50
  idempotency_key:
    description:
      - For V(trigger) (and the trigger a restart falls back to). Stored as the pipeline variable
        C(SELFHOSTED_REGISTRY_IDEMPOTENCY_KEY).
      - Before starting a pipeline, the 100 most recent pipelines of the repository are searched for a manual one on
        the same branch with the same key. If there is one, whatever its status (running or finished, successful or
        not), it is returned with RV(reused=true) and nothing is started, unless O(force=true).
      - There is no default key. The commit a manual pipeline builds is chosen by the server when it starts, so the
        module cannot know it beforehand; a playbook that knows it passes it, for example
        V({{ branch }}@{{ commit_sha }}), or any name for the rebuild, for example V(incident-2026-11-29).
    type: str
  force:
    description:
      - Start a new pipeline even when O(idempotency_key) matches one, restart a pipeline that was already
        restarted, or restart the newest failed pipeline on the branch even when a newer one exists.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details:
      - In check mode the module sends nothing to the server, not even reads. It returns what it would do, with
        C(changed=true) for V(trigger), V(restart) and V(cancel) (the server is not asked whether a key matches or
        the pipeline already finished) and C(changed=false) for V(status); pipeline data is null.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description:
      - Whether running the task again with the same options changes nothing more.
    support: partial
    details:
      - V(trigger) is idempotent only with O(idempotency_key). V(restart) of a given number returns the pipeline a
        previous restart created. V(restart) without a number restarts only when the newest pipeline on the branch
        failed. V(cancel) of a finished pipeline changes nothing. V(status) never changes anything.
      - C(changed) is true only when this task started, restarted or canceled a pipeline (or made the server store
        one already in error). A pipeline found after a lost answer counts as started by this task.
notes:
  - Run it where the Woodpecker server is reachable, usually with O(ignore:delegate_to=localhost).
  - The C(latest) route of Woodpecker returns push pipelines only, so the module never uses it to find a manual
    pipeline; it reads the pipeline list instead (pages of 50, filtered again on the client because servers before
    3.0 ignore the list filters).
author:
  - selfhosted.registry maintainers (@selfhosted-registry)
"""

EXAMPLES = r"""
- name: Rebuild the CI image and wait for the result
  selfhosted.registry.woodpecker_pipeline:
    server_url: https://ci.example.com
    token: "{{ woodpecker_token }}"
    repo: infra/ci-image
    branch: main
    variables:
      REASON: registry incident, manifests lost
    idempotency_key: "main@{{ ci_image_commit }}"
    wait: true
    wait_timeout: 3600
  delegate_to: localhost
  register: rebuild

# No token option: the module reads WOODPECKER_TOKEN from the controller's environment (export it
# before ansible-playbook). A task-level environment: would put the token in the command line
# Ansible prints at -vvv.
- name: Restart the latest failed pipeline on main, starting a fresh one if the server lost its definition
  selfhosted.registry.woodpecker_pipeline:
    server_url: https://ci.example.com
    repo: infra/ci-image
    action: restart
    branch: main
    fallback_to_trigger: true
    wait: true
  delegate_to: localhost

- name: Cancel a pipeline by number
  selfhosted.registry.woodpecker_pipeline:
    server_url: https://ci.example.com
    token: "{{ woodpecker_token }}"
    repo_id: 12
    action: cancel
    pipeline: 431
  delegate_to: localhost

- name: Report the newest pipeline on main without failing
  selfhosted.registry.woodpecker_pipeline:
    server_url: https://ci.example.com
    token: "{{ woodpecker_token }}"
    repo: infra/ci-image
    action: status
  delegate_to: localhost
  register: ci_state
"""

RETURN = r"""
msg:
  description: One line saying what was done (or would be done, in check mode).
  returned: always
  type: str
  sample: Started Woodpecker pipeline infra/ci-image#432 (manual on main), finished with status success.
error_reason:
  description:
    - When the action could not be done, a short cause a playbook can branch on. V(unreachable) and V(timeout) mean
      the Woodpecker server did not answer (the runbook's cue to rebuild on the registry host instead); V(tls) that its
      certificate was refused; others include V(unauthorized), V(not_found), V(server_error), V(not_woodpecker),
      V(filtered), V(blocked), V(config_error), V(bad_input), V(bad_response) and V(answer_lost).
  returned: when the action could not be done
  type: str
  sample: unreachable
changed:
  description:
    - True when a pipeline was started, restarted or canceled (in check mode, when one would be).
    - Also true on a failure where the request made the server store a pipeline already in C(error) (the
      configuration could not be fetched or does not parse or lint, or a restart lost its definition); that
      pipeline is then returned with its RV(url).
  returned: always
  type: bool
  sample: true
repo:
  description: Repository full name as the server knows it (in check mode, as given).
  returned: always
  type: str
  sample: infra/ci-image
repo_id:
  description: Numeric repository id (null in check mode unless given).
  returned: always
  type: int
  sample: 12
pipeline:
  description: Pipeline number (null in check mode).
  returned: always
  type: int
  sample: 432
url:
  description:
    - The pipeline's page in the Woodpecker UI, C({server_url}/repos/{repo_id}/pipeline/{number}).
    - Set whenever a pipeline number is known, on failures too; null otherwise.
  returned: always
  type: str
  sample: https://ci.example.com/repos/12/pipeline/432
status:
  description: Pipeline status as the server reports it (C(pending), C(running), C(success), C(failure), ...).
  returned: always
  type: str
  sample: success
finished:
  description: True when the status is a finished one (C(success), C(failure), C(killed), C(error), C(declined),
    C(skipped), C(canceled)).
  returned: always
  type: bool
  sample: true
success:
  description: True when the status is C(success).
  returned: always
  type: bool
  sample: true
timed_out:
  description: True when O(wait_timeout) ran out before the pipeline finished.
  returned: always
  type: bool
  sample: false
parent:
  description: For a restarted pipeline, the number it was restarted from; otherwise 0.
  returned: always
  type: int
  sample: 431
event:
  description: Event that started the pipeline (C(manual) for a trigger; a restart keeps the original event).
  returned: always
  type: str
  sample: manual
branch:
  description: Branch of the pipeline.
  returned: always
  type: str
  sample: main
commit:
  description: Commit the pipeline builds.
  returned: always
  type: str
  sample: 4d3c2b1a0f9e8d7c6b5a49382716051f4e3d2c1b
created_at:
  description: When the pipeline was created, unix seconds (either server spelling), or null.
  returned: always
  type: int
  sample: 1764412800
started_at:
  description: When the pipeline started, unix seconds, or null.
  returned: always
  type: int
  sample: 1764412805
finished_at:
  description: When the pipeline finished, unix seconds, or null.
  returned: always
  type: int
  sample: 1764413100
errors:
  description: Pipeline error messages (from C(errors[]) or the v1 C(error) string).
  returned: always
  type: list
  elements: str
  sample: []
steps:
  description: Every step of every workflow, in order.
  returned: always
  type: list
  elements: dict
  contains:
    workflow:
      description: Workflow name.
      type: str
      sample: build
    name:
      description: Step name.
      type: str
      sample: push-image
    id:
      description: Step id (the one the log route uses).
      type: int
      sample: 9031
    state:
      description: Step state.
      type: str
      sample: failure
    exit_code:
      description: Exit code, or null.
      type: int
      sample: 1
    started:
      description: Start time, unix seconds, or null.
      type: int
      sample: 1764412810
    finished:
      description: End time, unix seconds, or null.
      type: int
      sample: 1764413100
    error:
      description: The step's error message, empty when none.
      type: str
      sample: ""
failed_step:
  description: The first failed step (same keys as an entry of RV(steps)), or null when the pipeline did not fail or
    no step failed.
  returned: always
  type: dict
  sample:
    workflow: build
    name: push-image
    id: 9031
    state: failure
    exit_code: 1
    started: 1764412810
    finished: 1764413100
    error: ""
failed_step_log:
  description: The last O(log_lines) lines of the failed step's log (base64 decoded), empty when there is none.
  returned: always
  type: list
  elements: str
  sample:
    - "Error response from daemon: manifest for registry.example.com:5000/infra-ci:latest not found"
created_new:
  description: True when this task created a pipeline (trigger, restart, or the trigger a restart fell back to).
  returned: always
  type: bool
  sample: true
reused:
  description: True when an existing pipeline was returned instead of starting one (O(idempotency_key) matched, the
    pipeline was already restarted, or the newest pipeline on the branch did not fail).
  returned: always
  type: bool
  sample: false
canceled:
  description: True when this task sent the cancel.
  returned: always
  type: bool
  sample: false
fallback_used:
  description: True when a restart hit the lost-definition bug and a fresh manual pipeline was started instead (the
    message names the pipeline it replaces).
  returned: always
  type: bool
  sample: false
raw:
  description: The server's last answer for the pipeline, unchanged (null in check mode).
  returned: always
  type: dict
  sample:
    number: 432
    status: success
    event: manual
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ..module_utils._woodpecker_client import (
    REQUESTS_IMPORT_ERROR,
    ActionOutcome,
    ActionRequest,
    Pipeline,
    WoodpeckerClient,
    WoodpeckerError,
    run_action,
    stringify_variables,
)

ARGUMENT_SPEC: t.Dict[str, t.Dict[str, t.Any]] = dict(
    server_url=dict(type="str", required=True, fallback=(env_fallback, ["WOODPECKER_SERVER"])),
    token=dict(type="str", required=True, no_log=True, fallback=(env_fallback, ["WOODPECKER_TOKEN"])),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
    timeout=dict(type="int", default=30),
    repo=dict(type="str"),
    repo_id=dict(type="int"),
    action=dict(type="str", choices=["trigger", "restart", "cancel", "status"], default="trigger"),
    branch=dict(type="str"),
    variables=dict(type="dict", default={}),
    pipeline=dict(type="int"),
    fallback_to_trigger=dict(type="bool", default=False),
    wait=dict(type="bool", default=False),
    wait_timeout=dict(type="int", default=1800),
    poll_interval=dict(type="float", default=10),
    log_lines=dict(type="int", default=50),
    idempotency_key=dict(type="str", no_log=False),
    force=dict(type="bool", default=False),
)

_EMPTY_PIPELINE: t.Dict[str, t.Any] = dict(
    pipeline=None, url=None, status=None, finished=False, success=False, timed_out=False, parent=None, event=None,
    branch=None, commit=None, created_at=None, started_at=None, finished_at=None, errors=[], steps=[],
    failed_step=None, failed_step_log=[], created_new=False, reused=False, canceled=False, fallback_used=False,
    raw=None,
)


def _pipeline_fields(pipeline: Pipeline) -> t.Dict[str, t.Any]:
    return dict(
        pipeline=pipeline.number, status=pipeline.status, finished=pipeline.finished, success=pipeline.success,
        parent=pipeline.parent, event=pipeline.event, branch=pipeline.branch, commit=pipeline.commit,
        created_at=pipeline.created_at, started_at=pipeline.started_at, finished_at=pipeline.finished_at,
        errors=list(pipeline.errors), steps=[step.as_dict() for step in pipeline.steps], raw=pipeline.raw,
    )


def _shape(outcome: ActionOutcome) -> t.Dict[str, t.Any]:
    result = dict(_EMPTY_PIPELINE)
    result.update(_pipeline_fields(outcome.pipeline))
    result.update(
        repo=outcome.repo.full_name, repo_id=outcome.repo.id, url=outcome.url, timed_out=outcome.timed_out,
        failed_step=outcome.failed_step.as_dict() if outcome.failed_step else None,
        failed_step_log=outcome.failed_step_log, created_new=outcome.created_new, reused=outcome.reused,
        canceled=outcome.canceled, fallback_used=outcome.fallback_used, changed=outcome.changed,
    )
    return result


def _summary(action: str, outcome: ActionOutcome) -> str:
    pipeline = outcome.pipeline
    name = f"Woodpecker pipeline {outcome.repo.full_name}#{pipeline.number}"
    if outcome.fallback_used:
        head = (f"Started {name} (manual on {pipeline.branch}) in place of restarting "
                f"#{outcome.replaced}, whose definition the server lost")
    elif outcome.reused:
        head = f"Reused {name} instead of starting another"
    elif outcome.created_new and action == "restart":
        head = f"Restarted {outcome.repo.full_name}#{pipeline.parent} as {name}"
    elif outcome.created_new:
        head = f"Started {name} ({pipeline.event} on {pipeline.branch})"
    elif outcome.canceled:
        head = f"Canceled {name}"
    elif action == "cancel":
        head = f"{name} had already finished, nothing to cancel"
    else:
        head = name
    return f"{head}, status {pipeline.status}: {outcome.url}"


def _failure_message(outcome: ActionOutcome, params: t.Mapping[str, t.Any]) -> str:
    pipeline = outcome.pipeline
    name = f"Woodpecker pipeline {outcome.repo.full_name}#{pipeline.number}"
    if outcome.timed_out:
        return f"{name} did not finish within {params['wait_timeout']} s (last status {pipeline.status}); it goes " \
               f"on running on the server: {outcome.url}"
    if pipeline.status == "blocked":
        return f"{name} is blocked waiting for approval in the Woodpecker UI: {outcome.url}"
    message = f"{name} finished with status {pipeline.status}"
    step = outcome.failed_step
    if step is not None:
        message += f": step {step.name} (workflow {step.workflow}) ended {step.state}"
        if step.exit_code not in (None, 0):
            message += f" with exit code {step.exit_code}"
        if step.error:
            # A step in `error` never ran its commands (image pull, volume, ...): the reason is only here.
            message += f": {step.error}"
    elif pipeline.errors:
        message += f": {pipeline.errors[0]}"
    message += f" ({outcome.url})"
    if outcome.failed_step_log:
        shown = len(outcome.failed_step_log)
        message += f"; last {shown} log line{'s' if shown != 1 else ''}:\n" + "\n".join(outcome.failed_step_log)
    elif step is not None and params["log_lines"] > 0:
        message += "; the step left no log"
    return message


def _check_mode_result(params: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    action = params["action"]
    repo = params["repo"] or f"id {params['repo_id']}"
    branch = params["branch"] or "the default branch"
    target = f"pipeline #{params['pipeline']}" if params["pipeline"] else None
    planned = {
        "trigger": f"would start a manual pipeline on {branch} of {repo}",
        "restart": f"would restart {target or 'the newest failed pipeline on ' + branch} of {repo}",
        "cancel": f"would cancel {target} of {repo}",
        "status": f"would read {target or 'the newest pipeline on ' + branch} of {repo}",
    }[action]
    result = dict(_EMPTY_PIPELINE)
    result.update(changed=action != "status", repo=params["repo"], repo_id=params["repo_id"],
                  msg=f"Check mode: {planned}; nothing was sent to the server.")
    return result


def _run(params: t.Mapping[str, t.Any]) -> t.Tuple[t.Optional[ActionOutcome], t.Optional[WoodpeckerError]]:
    """Build the client and do the action: the outcome, or the error to report."""
    verify: t.Union[bool, str] = bool(params["validate_certs"])
    if verify and params["ca_path"]:
        verify = params["ca_path"]
    try:
        request = ActionRequest(
            action=params["action"], repo=params["repo"], repo_id=params["repo_id"], branch=params["branch"],
            variables=stringify_variables(params["variables"]), pipeline=params["pipeline"],
            fallback_to_trigger=params["fallback_to_trigger"], wait=params["wait"],
            wait_timeout=params["wait_timeout"], poll_interval=params["poll_interval"],
            log_lines=params["log_lines"], idempotency_key=params["idempotency_key"], force=params["force"],
        )
        client = WoodpeckerClient(params["server_url"], params["token"], verify=verify,
                                  timeout=float(params["timeout"]))
    except WoodpeckerError as exc:
        return None, exc
    try:
        return run_action(client, request), None
    except WoodpeckerError as exc:
        return None, exc
    finally:
        client.close()


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("repo", "repo_id")],
        required_one_of=[("repo", "repo_id")],
        required_if=[("action", "cancel", ["pipeline"])],
        supports_check_mode=True,
    )
    params = module.params
    if REQUESTS_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("requests"), exception=str(REQUESTS_IMPORT_ERROR))
    for option in ("wait_timeout", "log_lines"):
        if params[option] < 0:
            module.fail_json(msg=f"{option} must not be negative, not {params[option]}.")
    for option in ("timeout", "poll_interval"):
        if params[option] <= 0:
            module.fail_json(msg=f"{option} must be positive, not {params[option]}.")
    if module.check_mode:
        module.exit_json(**_check_mode_result(params))

    outcome, error = _run(params)
    # Failing outside the except block: a user error is one sentence, with no traceback attached.
    if outcome is None:
        result = dict(_EMPTY_PIPELINE, changed=False)
        if error is not None and error.pipeline is not None:
            # The server stored a pipeline already in error (its configuration could not be fetched or does
            # not lint, or a restart lost its definition): the request did create something, so report it,
            # with its page, and changed.
            result.update(_pipeline_fields(error.pipeline), url=error.url, changed=True)
        module.fail_json(msg=str(error), error_reason=error.reason if error is not None else "error", **result)
        return

    for warning in outcome.warnings:
        module.warn(warning)
    result = _shape(outcome)
    pipeline = outcome.pipeline
    if params["wait"]:
        unsuccessful = pipeline.finished and not pipeline.success and params["action"] != "cancel"
        if outcome.timed_out or pipeline.status == "blocked" or unsuccessful:
            module.fail_json(msg=_failure_message(outcome, params), **result)
    module.exit_json(msg=_summary(params["action"], outcome), **result)


if __name__ == "__main__":
    main()
