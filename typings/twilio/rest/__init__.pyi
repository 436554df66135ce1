from typing import Any

from twilio.http.http_client import TwilioHttpClient

# Only the calls resource the gateway uses: client.calls.create(...) and
# client.calls(sid).update(...), each answering a call instance.

class _CallInstance:
    sid: str | None
    status: str | None

class _CallContext:
    def update(self, **params: Any) -> _CallInstance: ...

class _CallList:
    def create(self, **params: Any) -> _CallInstance: ...
    def __call__(self, sid: str) -> _CallContext: ...

class Client:
    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        account_sid: str | None = None,
        region: str | None = None,
        http_client: TwilioHttpClient | None = None,
        environment: dict[str, str] | None = None,
        edge: str | None = None,
        user_agent_extensions: list[str] | None = None,
        credential_provider: object | None = None,
    ) -> None: ...
    @property
    def calls(self) -> _CallList: ...
