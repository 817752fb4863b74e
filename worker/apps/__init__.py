"""The call's app: the API an app sees (:mod:`worker.apps.api`), the built-in apps and the loader.

Built in: ``echo`` (loops the caller's audio back), ``play:<wav path>`` (plays a file, then hangs up),
``record:<directory>`` (the caller's audio to ``<directory>/<call id>.wav``), ``ivr`` (a keypad menu, made
to be copied). A user's own app is named as ``package.module:function``. See
:func:`worker.apps.loader.load_app`.
"""

from worker.apps.api import App, Call, CallEnded, CallInfo, Digit, MediaCall
from worker.apps.loader import AppSpecError, load_app

__all__ = ["App", "AppSpecError", "Call", "CallEnded", "CallInfo", "Digit", "MediaCall", "load_app"]
