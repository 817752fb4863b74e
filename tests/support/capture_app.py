"""An app that decides per caller whether Meta records the call.

``CALLHOOK_APP=tests.support.capture_app:app``: callers with a Brazilian number (55...) are recorded and
transcribed, announced in Portuguese; everyone else, username-only users included, is neither. The choice is
made in ``prepare``, before the accept that carries it.
"""

from __future__ import annotations

from worker.apps.api import Call, CallInfo, MediaCall
from worker.apps.echo import echo
from worker.capture import Capture, Consent


class Prepared:
    def __init__(self, capture: Capture | None) -> None:
        self.capture = capture

    async def run(self, call: MediaCall) -> None:
        await echo(call)

    async def aclose(self) -> None:
        return None


class DecideFromCaller:
    async def __call__(self, call: Call) -> None:
        await echo(call)

    async def prepare(self, info: CallInfo) -> Prepared:
        if info.user_number.startswith("55"):
            consent = Consent("ENABLED", "atendimento de qualidade", "pt")
            return Prepared(Capture(consent, consent))
        return Prepared(None)


app = DecideFromCaller()
