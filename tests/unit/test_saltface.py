"""spirodeploy.saltface: what the three Salt faces share, without a Salt loader."""

from __future__ import annotations

import inspect

import pytest

from spirodeploy import saltface
from spirodeploy.errors import ConnectError, UsageError
from spirodeploy.settings import Settings

TOKEN = "s3cret-token-value"


def test_virtual_is_the_virtualname_or_says_which_module_is_missing():
    assert saltface.virtual("spirodeploy") == "spirodeploy"
    assert saltface.virtual("spirodeploy", needs="spirodeploy.status",
                            functions={"spirodeploy.status": print}) == "spirodeploy"
    assert saltface.virtual("spirodeploy", needs="spirodeploy.status", functions={}) == (
        False, "the spirodeploy execution module is not available (saltutil.sync_modules)")


def test_in_salt_terms_names_salt_settings_and_keeps_the_signature():
    @saltface.in_salt_terms
    def deploy(project, allow_empty=False):
        raise UsageError("the bundle is empty", setting="allow_empty",
                         fix="; use {allow_empty} to deploy it anyway")

    # Salt's loader reads a function's arguments through __wrapped__.
    assert list(inspect.signature(deploy).parameters) == ["project", "allow_empty"]
    with pytest.raises(UsageError) as caught:
        deploy("proj")
    assert "allow_empty=True" in caught.value.message
    assert "--allow-empty" not in caught.value.message


def test_in_salt_terms_shares_the_face_globals():
    """A runner job gives the runner ``__jid_event__`` through a function's __globals__."""
    namespace = {"__name__": "salt.loaded.ext.runners.spirodeploy_mod"}
    exec("def deploy(project):\n    return __jid_event__\n", namespace)  # pylint: disable=exec-used
    wrapped = saltface.in_salt_terms(namespace["deploy"])
    assert wrapped.__globals__ is namespace
    wrapped.__globals__["__jid_event__"] = "the job's events"
    assert wrapped("proj") == "the job's events"


def test_failure_sets_the_job_retcode_and_keeps_the_key_order():
    context = {}
    error = ConnectError("cannot reach the server")
    ret = saltface.failure(error, context, server="https://salt:4510/")
    assert list(ret) == ["result", "server", "error", "exit_code"]
    assert ret["result"] is False and ret["error"] == error.message
    assert context["retcode"] == ret["exit_code"] == int(error.exit_code) != 0
    assert saltface.failure(error, {}, retcode=True)["retcode"] == int(error.exit_code)


class Report:
    def __init__(self, exit_code):
        self.exit_code = exit_code

    def to_dict(self):
        return {"result": not self.exit_code, "summary": f"deployed with {TOKEN}"}


def test_finish_scrubs_and_sets_the_retcode_only_on_failure():
    context = {}
    ok = saltface.finish(Report(0), context, secrets=[TOKEN], warnings=("w",), extra={"x": 1})
    assert TOKEN not in str(ok) and ok["warnings"] == ["w"] and ok["x"] == 1
    assert "retcode" not in context and "retcode" not in ok
    failed = saltface.finish(Report(4), context, secrets=[TOKEN], warnings=[], retcode=True)
    assert failed["retcode"] == context["retcode"] == 4


def test_event_callback_fires_scrubbed_events_through_send():
    sent = []
    settings = Settings(server="https://salt:4510/", token=TOKEN)
    on_event = saltface.event_callback("proj", "prod", settings, {"__role": "minion"},
                                       lambda tag, data: sent.append((tag, data)) or True)
    on_event("deploy-bundle", {"msg": f"got {TOKEN}"}, None)
    assert [tag for tag, _ in sent] == ["spirodeploy/proj/prod/deploy-bundle"]
    assert TOKEN not in str(sent)
    assert saltface.event_callback("proj", "prod", settings, {}, None, fire=False) is None


def test_scrub_narrowed_keeps_only_the_narrowed_token():
    ret = saltface.scrub_narrowed({"result": True, "note": TOKEN, "token": TOKEN + "-narrow"},
                                  [TOKEN])
    assert ret["token"] == TOKEN + "-narrow" and TOKEN not in ret["note"]
