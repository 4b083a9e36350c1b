"""`pilotif allow|deny TARGET SPEC` and `pilotif policy [default|reload]`: the port policy
of the running node (pilotif.node.policy says what the rules mean). Every change is
checked by the daemon first: a bad rule changes nothing."""

from pathlib import Path
from typing import Any

import click

from pilotif.cli.common import (
    DAEMON_ERRORS,
    echo_result,
    json_option,
    json_output,
    node_request,
    state_dir_option,
)

_TARGET_HELP = "TARGET is a peer's hostname, tag:NAME, network or *"
_SPEC_HELP = "SPEC is PORT/PROTO, LOW-HIGH/PROTO or */PROTO (tcp, udp), or icmp"


def _show(reply: dict[str, Any], as_json: bool) -> None:
    policy = reply.get("policy", {})
    lines = [f"default {policy.get('default')}", *policy.get("rules", [])]
    denied = {name: count for name, count in reply.get("policy_denied", {}).items() if count}
    if denied:
        lines.append("refused: " + ", ".join(f"{n}={c}" for n, c in sorted(denied.items())))
    echo_result(
        as_json, {k: reply[k] for k in ("policy", "policy_denied") if k in reply}, "\n".join(lines)
    )


def _rule_command(action: str, help_text: str) -> click.Command:
    """`pilotif allow|deny TARGET SPEC`: add the rule, show the policy it leaves."""

    @click.argument("target")
    @click.argument("spec")
    @json_option
    @state_dir_option
    @json_output(
        '{"policy": {"default", "rules": [RULE]}, "policy_denied": {hostname: count}}',
        (*DAEMON_ERRORS, "bad_policy", "peer_not_found"),
    )
    def add_rule(target: str, spec: str, as_json: bool, state_dir: Path) -> None:
        reply = node_request(state_dir, "policy_rule", action=action, target=target, spec=spec)
        _show(reply, as_json)

    return click.command(action, help=f"{help_text} {_TARGET_HELP}; {_SPEC_HELP}.")(add_rule)


allow = _rule_command("allow", "Let TARGET open SPEC on this node.")
deny = _rule_command("deny", "Refuse TARGET SPEC on this node.")


@click.group(invoke_without_command=True)
@json_option
@state_dir_option
@click.pass_context
@json_output(
    '{"policy": {"default", "rules": [RULE]}, "policy_denied": {hostname: count}}',
    DAEMON_ERRORS,
)
def policy(ctx: click.Context, as_json: bool, state_dir: Path) -> None:
    """Show the port policy in force (and what it refused, per peer)."""
    if ctx.invoked_subcommand is None:
        _show(node_request(state_dir, "policy"), as_json)


@policy.command("default")
@click.argument("action", type=click.Choice(["allow", "deny"]))
@json_option
@state_dir_option
@json_output(
    '{"policy": {"default", "rules": [RULE]}, "policy_denied": {hostname: count}}',
    (*DAEMON_ERRORS, "bad_policy"),
)
def policy_default(action: str, as_json: bool, state_dir: Path) -> None:
    """What a port no rule names gets: allow (as without a policy) or deny."""
    _show(node_request(state_dir, "policy_default", action=action), as_json)


@policy.command("reload")
@json_option
@state_dir_option
@json_output(
    '{"policy": {"default", "rules": [RULE]}, "policy_denied": {hostname: count}}',
    (*DAEMON_ERRORS, "bad_policy"),
)
def policy_reload(as_json: bool, state_dir: Path) -> None:
    """Read `up --policy FILE` again (as SIGHUP does); a bad file changes nothing."""
    _show(node_request(state_dir, "policy_reload"), as_json)
