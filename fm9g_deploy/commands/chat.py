"""`fm9g-deploy chat`: talk to the served model, streaming, like the guide's multi-turn script."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Chat with the served model through its OpenAI-compatible API, the way the guide's
multi-turn client does: each reply streams as it is generated and the conversation is
kept, so later questions see earlier turns. Type `quit` (or press Ctrl-D) to end.

With --message, send one message, print the streamed reply and exit.

The API key comes from --api-key-file or the FM9G_API_KEY variable (in that order) and is
never printed; it is not taken on the command line, where `ps` would show it. Before the first message the command checks the URL, the key and that
--model is served; a problem there stops it with one line and exit 2.
"""

#: What ends an interactive chat, as in the guide.
QUIT_WORD = "quit"
#: Bounds of the options (beyond them a value is a typo; the server would refuse or never finish).
MAX_TOKENS = 1 << 20
MAX_TEMPERATURE = 100.0
MAX_TIMEOUT_S = 86400


def register(subparsers) -> None:
    from fm9g_deploy.bench.endpoint import add_endpoint_args

    parser = subparsers.add_parser("chat", help="chat with the served model (streaming, multi-turn)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_endpoint_args(parser)
    parser.add_argument("--message", metavar="TEXT", help="send this one message, print the reply, exit")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="longest reply in tokens (default: the server's)")
    parser.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default: the server's)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="give up on a reply after this long (default: 300)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from fm9g_deploy.bench.endpoint import api_key_from, base_url
    from fm9g_deploy.errors import UserError

    if args.max_tokens is not None and not 1 <= args.max_tokens <= MAX_TOKENS:
        raise UserError(f"--max-tokens {args.max_tokens} must be 1 to {MAX_TOKENS}")
    if args.temperature is not None and not 0 <= args.temperature <= MAX_TEMPERATURE:
        raise UserError(f"--temperature {args.temperature:g} must be 0 to {MAX_TEMPERATURE:g}")
    if not 0 < args.timeout <= MAX_TIMEOUT_S:  # also refuses nan and inf
        raise UserError(f"--timeout {args.timeout:g} must be above 0 and at most {MAX_TIMEOUT_S} seconds")
    if args.message is not None and not args.message.strip():
        raise UserError("--message is empty; write the message to send")
    url = base_url(args.url)
    key = api_key_from(args)
    session = ChatSession(url, key, args.model, max_tokens=args.max_tokens, temperature=args.temperature,
                          timeout=args.timeout)
    session.check_endpoint()
    if args.message is not None:
        session.send(args.message, sys.stdout)
        return 0
    interactive = sys.stdin.isatty()
    print(f"Chatting with {args.model} at {url}. Type '{QUIT_WORD}' or press Ctrl-D to end.", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if line.strip().lower() == QUIT_WORD:
            break
        if not line.strip():
            continue
        if interactive:
            print(f"{args.model}> ", end="", flush=True)
        session.send(line, sys.stdout)
    return 0


class ChatSession:
    """A conversation with one served model; turns are kept so the model sees the history."""

    def __init__(self, url: str, api_key: str | None, model: str, *, max_tokens: int | None = None,
                 temperature: float | None = None, timeout: float = 300.0) -> None:
        from openai import OpenAI

        self.url, self.api_key, self.model = url, api_key, model
        # A server started without --api-key takes any key; the client library wants one.
        self.client = OpenAI(api_key=api_key or "none", base_url=f"{url}/v1", max_retries=0, timeout=timeout)
        self.options = {name: value for name, value in
                        (("max_tokens", max_tokens), ("temperature", temperature)) if value is not None}
        self.messages: list[dict[str, str]] = []

    def check_endpoint(self) -> None:
        """The URL answers, takes the key and serves the model (UserError otherwise)."""
        from fm9g_deploy.bench.endpoint import model_missing_message
        from fm9g_deploy.errors import UserError

        with self._errors_explained():
            served = [model.id for model in self.client.models.list()]
        if self.model not in served:
            raise UserError(model_missing_message(self.url, self.model, served))

    def send(self, text: str, out) -> str:
        """Send one user message, write the streamed reply to ``out``, keep both turns."""
        self.messages.append({"role": "user", "content": text})
        reply: list[str] = []
        try:
            with self._errors_explained():
                stream = self.client.chat.completions.create(
                    model=self.model, messages=self.messages, stream=True, **self.options)
                for chunk in stream:
                    content = chunk.choices[0].delta.content if chunk.choices else None
                    if content:
                        out.write(content)
                        out.flush()
                        reply.append(content)
        except BaseException:
            self.messages.pop()  # the turn did not happen
            raise
        out.write("\n")
        out.flush()
        full = "".join(reply)
        self.messages.append({"role": "assistant", "content": full})
        return full

    def _errors_explained(self):
        return _explain_api_errors(self.url, self.model, self.api_key)


class _explain_api_errors:
    """Context manager: the OpenAI client's exceptions as the CLI's one-line errors."""

    def __init__(self, url: str, model: str, api_key: str | None) -> None:
        self.url, self.model, self.api_key = url, model, api_key

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback) -> bool:
        import openai

        from fm9g_deploy.bench.endpoint import key_rejected_message, model_missing_message
        from fm9g_deploy.errors import OperationFailed, UserError

        if exc is None:
            return False
        if isinstance(exc, openai.APITimeoutError):
            raise OperationFailed(f"{self.url} did not answer in time; try again or raise --timeout") from None
        if isinstance(exc, openai.APIConnectionError):
            raise UserError(f"cannot reach {self.url} ({_cause(exc)}); check --url and that the service is up") \
                from None
        if isinstance(exc, openai.AuthenticationError):
            raise UserError(key_rejected_message(self.url, self.api_key)) from None
        if isinstance(exc, openai.NotFoundError):
            raise UserError(model_missing_message(self.url, self.model, detail=_message(exc))) from None
        if isinstance(exc, openai.BadRequestError):
            raise UserError(f"{self.url} refused the request (400: {_message(exc)})") from None
        if isinstance(exc, openai.APIStatusError):
            raise OperationFailed(f"{self.url} answered {exc.status_code}: {_message(exc)}") from None
        return False


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    return str(getattr(exc, "message", exc))[:300]


def _cause(exc) -> str:
    cause = exc.__cause__ or exc.__context__
    return (str(cause).strip() or type(cause).__name__) if cause else "connection failed"
