"""Errors that reach the operator as one line and a fixed exit code."""


class UserError(Exception):
    """A mistake the operator can fix (bad input, missing file, engine not running).

    The CLI prints ``fm9g-deploy: error: <message>`` and exits with code 2; nothing has changed.
    """

    exit_code = 2


class OperationFailed(Exception):
    """Something the toolkit ran did not succeed (a playbook failed, a host is unreachable).

    The CLI prints the message and exits with code 1.
    """

    exit_code = 1
