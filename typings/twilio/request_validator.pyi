from collections.abc import Mapping

def get_signature_algorithm(signature_settings_header: str | None) -> str | None: ...

class RequestValidator:
    def __init__(self, token: str) -> None: ...
    def compute_signature(
        self, uri: str, params: Mapping[str, str], algorithm: str | None = None
    ) -> str: ...
    def validate(
        self,
        uri: str,
        params: Mapping[str, str] | str | bytes | None,
        signature: str,
        algorithm: str | None = None,
    ) -> bool: ...
