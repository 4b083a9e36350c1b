"""Where the node's port policy comes from: the operator's file (`up --policy FILE`,
read again on SIGHUP or `pilotif policy reload`) and the rules given on the command line
(`pilotif allow|deny`, `pilotif policy default`), kept in `STATE_DIR/policy.rules` so
that they survive restarts. The file's rules come first; a `default` line in the state
file (the CLI's) wins over the file's.
"""

from pathlib import Path
from typing import Final

from pilotif.node.policy import Action, Policy, PolicyError, Rule, parse_policy
from pilotif.util.files import StateFileError, read_state_file, write_private_file

POLICY_RULES_FILE: Final = "policy.rules"


class PolicyFiles:
    """The operator's policy file (if any) and the CLI's rules in the state dir."""

    def __init__(self, state_dir: Path, policy_file: Path | None) -> None:
        self.rules_path = state_dir / POLICY_RULES_FILE
        self.policy_file = policy_file

    def load(self) -> Policy:
        """The policy both files make; PolicyError (file and line) or StateFileError."""
        policy = Policy()
        if self.policy_file is not None:
            try:
                text = self.policy_file.read_text()
            except (OSError, UnicodeDecodeError) as error:
                raise PolicyError(f"{self.policy_file}: cannot read it ({error})") from None
            policy, _ = parse_policy(text, str(self.policy_file))
        added, sets_default = self._cli_rules()
        return policy.joined(added, sets_default)

    def add(self, rule: Rule) -> Policy:
        """Keep a rule given on the command line; the policy now in force."""
        added, sets_default = self._cli_rules()
        self._write(added.with_rule(rule), sets_default)
        return self.load()

    def set_default(self, action: Action) -> Policy:
        """Keep the default given on the command line; the policy now in force."""
        added, _ = self._cli_rules()
        self._write(Policy(action, added.rules), True)
        return self.load()

    def _cli_rules(self) -> tuple[Policy, bool]:
        try:
            text = read_state_file(self.rules_path)
        except StateFileError as error:
            raise PolicyError(str(error)) from None
        if text is None:
            return Policy(), False
        return parse_policy(text, str(self.rules_path))

    def _write(self, policy: Policy, sets_default: bool) -> None:
        lines = policy.text().splitlines()
        if not sets_default:
            lines = lines[1:]
        header = "# Rules from `pilotif allow|deny` and `pilotif policy default`.\n"
        write_private_file(self.rules_path, header + "".join(f"{line}\n" for line in lines))
