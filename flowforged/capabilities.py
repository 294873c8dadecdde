"""What a provider's API can do for the control API (`Capabilities`, declared on the Provider class).

An option a provider cannot honour is refused with 422 naming it (flowforged/api/actions.py,
flowforged/operations.py), never silently dropped. The contract test (flowforged/testkit.py) holds
each declaration to the methods the provider overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider's API can do for the control API. An option it cannot honour is refused with
    422 naming it (flowforged.api.actions), never silently dropped."""

    trigger: bool = False
    inputs: bool = False  # what the pipeline declares it takes (workflow_dispatch inputs, spec:inputs, ...)
    variables: bool = False  # CI/CD variables set for one run (GitLab variables, Buildkite env)
    rerun: bool = False  # every job of a run again
    rerun_failed: bool = False  # only its failed jobs
    cancel: bool = False
    force_cancel: bool = False

    def refusal(self, provider: str, action: str, options: Mapping[str, Any]) -> tuple[str, str] | None:
        """(option, reason) for the first option of `action` this provider cannot honour (the action
        itself when it has none of it), else None.

        `options` are the request's: trigger (`inputs`, `variables`), rerun (`failed_only`, None when
        not given), cancel (`force`)."""
        if action == "trigger":
            if not self.trigger:
                return "trigger", f"{provider} sources cannot trigger runs"
            for name in ("inputs", "variables"):
                if options.get(name) and not getattr(self, name):
                    return name, f"{provider} pipelines take no {name}" + (
                        " (pass them as inputs)" if name == "variables" and self.inputs else ""
                    )
        elif action == "rerun":
            failed_only = options.get("failed_only")
            if failed_only is None and not (self.rerun or self.rerun_failed):
                return "rerun", f"{provider} sources cannot re-run runs"
            if failed_only is True and not self.rerun_failed:
                return "failed_only", f"{provider} cannot re-run only the failed jobs of a run"
            if failed_only is False and not self.rerun:
                return "failed_only", f"{provider} can re-run only the failed jobs of a run, not all of them"
        elif action == "cancel":
            if not self.cancel:
                return "cancel", f"{provider} sources cannot cancel runs"
            if options.get("force") and not self.force_cancel:
                return "force", f"{provider} has no forced cancel"
        return None
