"""What the three Salt faces share: loading, Salt's terms, bus events, returns.

The execution module, the runner and the state (``_modules/``, ``_runners/``
and ``_states/spirodeploy_mod.py``) keep only what needs Salt's loader; the
rest of what each of them would otherwise repeat is here:

* :func:`virtual` - what a face's ``__virtual__`` returns once this library
  is importable (when it is not, the face says how to install it itself);
* :func:`in_salt_terms` - a face function whose errors name Salt's settings;
* :func:`event_callback` - the ``on_event`` that fires each deploy event on
  Salt's bus through the face's ``send(tag, data)``;
* :func:`secrets_of`, :func:`failure`, :func:`finish`, :func:`scrub_narrowed` -
  a face's return: the error dict, the deploy report, the job's retcode and
  the tokens scrubbed.

Like the rest of ``spirodeploy/``, it never imports Salt: the faces hand in
their dunders (``__context__``, ``__opts__``) and callables.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, TypeVar

from . import saltsupport
from .errors import SpiroDeployError
from .report import DeployReport
from .settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
OnEvent = Callable[[str, Any, DeployReport], None]


def virtual(virtualname: str, *, needs: str | None = None,
            functions: Mapping[str, Any] | None = None) -> str | tuple[bool, str]:
    """A face's ``__virtual__`` answer, the library being importable.

    ``needs`` is an execution-module function the face cannot work without
    (the state calls ``spirodeploy.status``), looked up in ``functions``
    (the face's ``__salt__``).
    """
    if needs is not None and needs not in (functions or {}):
        return False, (f"the {virtualname} execution module is not available "
                       "(saltutil.sync_modules)")
    return virtualname


def in_salt_terms(func: F) -> F:
    """Run ``func`` so that its errors name Salt's settings, not the CLI's flags.

    The wrapper shares ``func``'s module globals: a runner job hands the
    runner its ``__jid_event__`` (the progress events) through the
    ``__globals__`` of one of its functions, which must be the face's, not
    this module's.
    """
    terms = saltsupport.salt_terms

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with terms():
            return func(*args, **kwargs)

    in_face = types.FunctionType(wrapper.__code__, func.__globals__, wrapper.__name__,
                                 wrapper.__defaults__, wrapper.__closure__)
    # Salt's loader reads the arguments through __wrapped__.
    return functools.wraps(func)(in_face)  # type: ignore[return-value]


def event_callback(project: str, deployment: str, settings: Settings | None,
                   opts: Mapping[str, Any], send: Callable[[str, dict], Any] | None, *,
                   fire: bool = True, printer: Any = None) -> OnEvent | None:
    """The ``on_event`` a face hands to the deploy, or None when it has nothing to do.

    Each event is fired on Salt's bus as ``spirodeploy/<project>/<deployment>/<event>``
    through ``send(tag, data)`` (see :func:`saltsupport.fire_event`) when
    ``fire`` is true, with the tokens of ``settings`` scrubbed, and shown
    first by ``printer`` (the runner's progress lines) when there is one.
    """
    if not fire and printer is None:
        return None
    secrets = saltsupport.tokens_of(settings)

    def on_event(event: str, data: Any, report: DeployReport) -> None:
        if printer is not None:
            printer.event(event, data, report)
        if fire:
            tag, payload = saltsupport.bus_event(project, deployment, event, data, secrets)
            saltsupport.fire_event(opts, send, tag, payload)

    return on_event


def secrets_of(token: str | None, settings: Settings | None) -> list[str | None]:
    """Every token a face's return must not hold: the argument's and the settings'."""
    return [token, *saltsupport.tokens_of(settings)]


def failure(error: SpiroDeployError, context: MutableMapping[str, Any], *,
            retcode: bool = False, **fields: Any) -> dict[str, Any]:
    """A face function's return when it failed with ``error``; sets the job's retcode.

    ``result`` False, then ``fields``, the ``error`` message and its
    ``exit_code`` (and ``retcode``, which the runner's returns carry).
    """
    code = int(error.exit_code)
    context["retcode"] = code
    ret = {"result": False, **fields, "error": error.message, "exit_code": code}
    if retcode:
        ret["retcode"] = code
    return ret


def finish(report: DeployReport, context: MutableMapping[str, Any], *,
           secrets: Iterable[str | None], warnings: Iterable[str],
           extra: Mapping[str, Any] | None = None, retcode: bool = False) -> dict[str, Any]:
    """A deploy's return: the report, ``extra`` and the ``warnings``, scrubbed.

    A failed deploy sets the job's retcode (``salt-call`` and ``salt-run``
    exit with it); ``retcode=True`` also puts it in the return, as the
    runner's returns carry it.
    """
    ret = report.to_dict()
    ret.update(extra or {})
    ret["warnings"] = list(warnings)
    code = int(report.exit_code)
    if retcode:
        ret["retcode"] = code
    if code:
        context["retcode"] = code
    return saltsupport.scrub(ret, secrets)


def scrub_narrowed(ret: dict[str, Any], secrets: Iterable[str | None]) -> dict[str, Any]:
    """``narrow_token``'s return, scrubbed but for the narrowed ``token`` it carries.

    The narrowed token starts with the same packets as the source token, so
    masking runs of the source would mangle it: it is the one value kept.
    """
    narrowed = ret.pop("token", None)
    ret = saltsupport.scrub(ret, secrets)
    if narrowed is not None:
        ret["token"] = narrowed
    return ret
