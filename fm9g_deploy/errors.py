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


#: The longest error line the CLI prints, its prefix included; a value quoted in a message (a
#: config's, an option's) must not turn one line into megabytes.
MAX_ERROR_LINE = 400


def one_line(text: str, limit: int = MAX_ERROR_LINE) -> str:
    """``text`` as one printable line of at most ``limit`` characters.

    Line breaks of every kind (those str.splitlines knows) become spaces, other control and
    invisible characters are shown escaped, and a long text keeps its start and its end (where
    messages say the fix), with "..." between.
    """
    chars = []
    for char in text:
        if char.isprintable():
            chars.append(char)
        elif char.isspace():
            chars.append(" ")
        else:  # control, format (bidi overrides), surrogates from undecodable argv bytes
            chars.append(char.encode("unicode_escape").decode("ascii"))
    flat = " ".join("".join(chars).split())
    if len(flat) <= limit:
        return flat
    tail = limit // 3
    return flat[: limit - tail - 5] + " ... " + flat[-tail:]
