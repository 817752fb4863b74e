"""Turn an app spec (``CALLHOOK_APP``) into the app to run for each call.

* ``echo``
* ``play:<path to a 16-bit PCM WAV file>``
* ``record:<existing writable directory>``
* ``ivr`` or ``ivr:<key>=<route>,...`` - a keypad menu (:mod:`worker.apps.ivr`): ``ivr`` alone is
  ``1=echo,2=play,9=hangup`` with a generated menu; ``menu=<wav file>`` and ``play:<wav file>`` routes
* ``transfer:<queue>`` - every call waits in ``queue`` for a person (:mod:`worker.handoff`, docs/handoff.md)
* ``ws://host[:port]/path`` or ``wss://…`` - the voice-agent bridge (:mod:`worker.apps.bridge`), configured by
  ``CALLHOOK_BRIDGE_*`` (:mod:`worker.apps.bridge_config`); ``ws:wss://…`` is the same with an explicit prefix
* ``package.module:function`` - a user's ``async def function(call: Call) -> None``

``play``, ``record`` and ``ivr`` are checked when loaded (the files are usable WAVs, the directory is
writable), so a bad setting fails at start-up (``check-config``) rather than on the first call. The built-in
names win over a user module of the same name.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path

from yarl import URL

from worker.apps.api import App
from worker.apps.bridge import Apology, Bridge
from worker.apps.bridge_config import BridgeSettings
from worker.apps.echo import echo
from worker.apps.ivr import IvrSpecError, Menu, ivr
from worker.apps.play import UnplayableFile, check_wav, play
from worker.apps.record import record
from worker.apps.transfer import transfer
from worker.errors import CallhookError


class AppSpecError(CallhookError):
    """The app spec names nothing runnable; the message says what is wrong and how specs look."""


USAGE = (
    "use echo, play:<wav file>, record:<directory>, ivr[:<key>=<route>,...], ws(s)://<voice agent> "
    "or package.module:function"
)
# What a dial's requester is told when its app cannot run: never the loader's text (paths, module names).
APP_REFUSED = "the requested app is not available on this deployment"


class UnknownApp(AppSpecError):
    """A dial named an app the operator did not configure (CALLHOOK_APPS)."""


class AppRegistry:
    """The operator's apps, loaded once at start-up: the default (``CALLHOOK_APP``) and every named one
    (``CALLHOOK_APPS``). Nothing else is ever loaded, so nothing a dial says can import a module, open a
    file or reach a URL, and the cache cannot grow."""

    def __init__(
        self, default: str, named: Mapping[str, str], *, bridge_settings: BridgeSettings | None = None
    ) -> None:
        self.default: App = load_app(default, bridge_settings=bridge_settings)
        self._apps: dict[str, App] = {}
        for name, spec in named.items():
            try:
                self._apps[name] = load_app(spec, bridge_settings=bridge_settings)
            except AppSpecError as exc:
                raise AppSpecError(f"CALLHOOK_APPS {name}: {exc}") from exc

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._apps)

    def get(self, name: str | None) -> App:
        """The app a dial asks for (None: the default); :class:`UnknownApp` for a name not configured."""
        if name is None:
            return self.default
        app = self._apps.get(name)
        if app is None:
            raise UnknownApp(APP_REFUSED)
        return app


def load_app(spec: str, *, bridge_settings: BridgeSettings | None = None) -> App:
    """The app ``spec`` names. ``bridge_settings`` configure a ``ws://``/``wss://`` app (defaults if None)."""
    spec = spec.strip()
    if spec == "echo":
        return echo
    if spec == "ivr" or spec.startswith("ivr:"):
        return _ivr(spec[len("ivr:") :])
    kind, sep, argument = spec.partition(":")
    if not sep or not kind or not argument:
        raise AppSpecError(f"app spec {spec!r} is not understood: {USAGE}")
    if kind in ("ws", "wss"):
        url = argument if argument.startswith(("ws://", "wss://")) else spec
        return _bridge(url, bridge_settings or BridgeSettings())
    if kind == "play":
        return _play(Path(argument))
    if kind == "record":
        return _record(Path(argument))
    if kind == "transfer":
        return functools.partial(transfer, queue=argument)
    return _user_app(kind, argument)


def _play(path: Path) -> App:
    try:
        check_wav(path)
    except UnplayableFile as exc:
        raise AppSpecError(f"play: {exc}") from exc
    return functools.partial(play, path=path)


def _ivr(routes: str) -> App:
    try:
        return functools.partial(ivr, menu=Menu.parse(routes))
    except IvrSpecError as exc:
        raise AppSpecError(str(exc)) from exc


def _record(directory: Path) -> App:
    if not directory.is_dir():
        raise AppSpecError(f"record: {directory} is not an existing directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise AppSpecError(f"record: {directory} is not writable")
    return functools.partial(record, directory=directory)


def _bridge(url: str, settings: BridgeSettings) -> App:
    parsed = URL(url)
    if parsed.scheme not in ("ws", "wss") or not parsed.host:
        # The URL is not echoed back: it may carry a token.
        raise AppSpecError(f"voice agent URL must be ws://host/... or wss://host/...: {USAGE}")
    apology = None
    if settings.apology_wav is not None:
        try:
            apology = Apology.from_wav(settings.apology_wav)
        except UnplayableFile as exc:
            raise AppSpecError(f"bridge apology: {exc}") from exc
    return Bridge(url, settings, apology)


def _user_app(module_name: str, attribute: str) -> App:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise AppSpecError(f"app module {module_name!r} not found ({exc}): {USAGE}") from exc
    except Exception as exc:  # user code failing at import: say so, whatever it raised
        raise AppSpecError(f"importing app module {module_name!r} failed: {exc!r}") from exc
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AppSpecError(f"app {module_name}:{attribute} not found: {module_name} has no {attribute!r}")
        target = getattr(target, part)
    if not _is_async_callable(target):
        raise AppSpecError(
            f"app {module_name}:{attribute} must be a coroutine function (async def app(call) -> None), "
            f"found {type(target).__name__}"
        )
    return target  # type: ignore[return-value]  # checked above: an async callable taking the call


def _is_async_callable(target: object) -> bool:
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004  # an object with ``async def __call__``
    return not inspect.isclass(target) and inspect.iscoroutinefunction(call)
