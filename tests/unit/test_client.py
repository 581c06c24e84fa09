"""spirodeploy.client against a fault-injecting fake server."""

from __future__ import annotations

import io
import ssl
import tarfile
import threading
import time

import pytest

from spirodeploy import client
from spirodeploy.client import check_token, upload
from spirodeploy.errors import (
    BundleRejected,
    ConnectError,
    ExitCode,
    MalformedEvent,
    NotAnEventStream,
    ServerError,
    StreamCut,
    StreamTimeout,
    TLSError,
    TokenNotAllowed,
    TokenRejected,
)
from tests.fakeserver import FakeSpiroServer, highstate_events, sse
from tests.saltbed.bed import make_tls_files


def small_tar() -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"hello:\n  test.nop\n"
        info = tarfile.TarInfo("hello.sls")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def run(server, token, highstate=True, **kwargs):
    kwargs.setdefault("sslverify", False)
    kwargs.setdefault("connect_retries", 0)
    return list(upload(server.url, token, small_tar(), "proj", "prod", highstate=highstate,
                       **kwargs))


def test_deploy_streams_events_and_sends_the_documented_request(fake_server, token):
    progress = []
    events = run(fake_server, token, progress=lambda sent, total: progress.append((sent, total)))
    assert [e for e, _ in events] == ["deploy-bundle", "highstate-calc", "highstate-start",
                                      "highstate-update", "highstate-finish"]
    request = fake_server.received[0]
    assert request.headers["Authorization"] == f"Bearer {token}"
    assert int(request.headers["Content-Length"]) == request.body_size
    assert request.fields == {"project": "proj", "deployment": "prod", "highstate": "1"}
    assert request.bundle == small_tar().getvalue() and request.bundle_parts == 1
    assert progress[-1][0] == progress[-1][1] == request.body_size


def test_no_highstate_omits_the_field(fake_server, token):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})])
    run(fake_server, token, highstate=False)
    assert "highstate" not in fake_server.received[0].fields


def test_events_are_yielded_as_they_arrive(fake_server, token):
    fake_server.then(chunks=highstate_events(), delay=0.3)
    stream = upload(fake_server.url, token, small_tar(), "proj", "prod", sslverify=False)
    assert next(stream)[0] == "deploy-bundle"
    assert len(fake_server.received) == 1
    stream.close()


@pytest.mark.parametrize("status,error,code", [
    (401, TokenRejected, ExitCode.AUTH), (403, TokenNotAllowed, ExitCode.AUTH),
    (400, BundleRejected, ExitCode.SERVER), (500, ServerError, ExitCode.SERVER),
    (502, ServerError, ExitCode.SERVER),
])
def test_error_statuses(fake_server, token, status, error, code):
    body = b"<html><title>%d: Bad things</title><body>x</body></html>" % status
    fake_server.then(status=status, content_type="text/html", chunks=[body])
    with pytest.raises(error) as info:
        run(fake_server, token)
    assert info.value.exit_code == code
    assert token not in str(info.value)
    if status == 403:
        assert info.value.server_has_bundle is True  # SpiroFS 0.3 deploys anyway
        assert "deploys the bundle even after refusing" in str(info.value)
    if status == 400:
        assert "Bad things" in str(info.value)


def test_redirect_is_not_followed_with_the_token(fake_server, token):
    with FakeSpiroServer() as elsewhere:
        fake_server.then(status=307, headers={"Location": elsewhere.url}, chunks=[b""])
        with pytest.raises(ServerError, match="redirected"):
            run(fake_server, token)
        assert elsewhere.received == []


def test_200_that_is_not_an_event_stream(fake_server, token):
    fake_server.then(content_type="text/html", chunks=[b"<html>proxy login</html>"])
    with pytest.raises(NotAnEventStream):
        run(fake_server, token)


def test_event_data_that_is_not_json(fake_server, token):
    fake_server.then(chunks=[b"event: deploy-bundle\ndata: {not json\n\n"])
    with pytest.raises(MalformedEvent, match="not JSON") as info:
        run(fake_server, token)
    assert info.value.exit_code == ExitCode.STREAM


def test_stream_cut_before_the_end(fake_server, token):
    fake_server.then(chunks=highstate_events()[:3], cut=True)
    with pytest.raises(StreamCut) as info:
        run(fake_server, token)
    assert info.value.server_has_bundle is True


def test_stream_cut_in_the_middle_of_an_event(fake_server, token):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "x"}), b"event: highstate-ca"])
    with pytest.raises(StreamCut, match="middle of an event"):
        run(fake_server, token)


def test_silent_server_hits_the_read_timeout(fake_server, token):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "x"}), sse("highstate-calc", {"msg": "y"})],
                     delay=2)
    with pytest.raises(StreamTimeout, match="read timeout"):
        run(fake_server, token, read_timeout=0.5)


def test_huge_highstate_update(fake_server, token):
    big = {"msg": "Minion m finished", "minion": "m",
           "result": {"ret": {f"test_|-s{i}_|-s{i}_|-nop": {
               "result": True, "changes": {}, "comment": "x" * 200, "__run_num__": i}
               for i in range(60000)}, "retcode": 0}}
    events = [sse("deploy-bundle", {"msg": "x"}),
              sse("highstate-start", {"msg": "s", "minions": ["m"]}), sse("highstate-update", big),
              sse("highstate-finish", {"msg": "done"})]
    fake_server.then(chunks=events)
    got = run(fake_server, token)
    assert len(got[2][1]["result"]["ret"]) == 60000


def test_connection_closed_during_upload(fake_server, token):
    fake_server.then(close_before_body=True)
    with pytest.raises((ConnectError, StreamCut)) as info:
        list(upload(fake_server.url, token, io.BytesIO(b"\0" * (8 << 20)), "proj", "prod",
                    sslverify=False, connect_retries=0))
    assert info.value.server_has_bundle is not True
    assert len(fake_server.received) == 1  # a POST that reached the server is not re-sent


def test_failure_after_the_server_answered_is_never_retried(fake_server, token):
    fake_server.then(chunks=highstate_events()[:2], cut=True)
    with pytest.raises(StreamCut):
        run(fake_server, token, connect_retries=3)
    assert len(fake_server.received) == 1


def test_connection_refused_is_retried_a_bounded_number_of_times(monkeypatch, token):
    # time.sleep is patched for every thread: only this one's pauses are
    # counted, and other threads (a server's poll loop) still really sleep.
    sleeps, real_sleep, this_thread = [], time.sleep, threading.current_thread()
    monkeypatch.setattr(client.time, "sleep", lambda seconds: sleeps.append(seconds)
                        if threading.current_thread() is this_thread else real_sleep(seconds))
    with FakeSpiroServer() as server:
        url = server.url  # closed on exit: nothing listens there any more
    with pytest.raises(ConnectError, match="connection refused") as info:
        list(upload(url, token, small_tar(), "proj", "prod", sslverify=False, connect_retries=2))
    assert len(sleeps) == 2 and info.value.exit_code == ExitCode.CONNECTION


def test_dns_failure(token):
    with pytest.raises(ConnectError, match="could not be resolved"):
        list(upload("https://no-such-host.invalid/", token, small_tar(), "p", "d",
                    connect_retries=0))


def test_token_never_in_errors_and_checked_before_sending(fake_server):
    from tests.support import make_token

    other = make_token({"not_before": 0, "project_allow": ["other"]})
    with pytest.raises(TokenNotAllowed):
        upload(fake_server.url, other, small_tar(), "proj", "prod", sslverify=False)
    assert fake_server.received == []


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    return {"good": make_tls_files(base / "good"),
            "other": make_tls_files(base / "other", hosts=("other.example",))}


def _tls_server(paths):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths.server_cert, paths.server_key)
    return FakeSpiroServer(tls_context=context)


def test_tls_with_the_right_ca(tls_files, token):
    with _tls_server(tls_files["good"]) as server:
        events = run(server, token, sslverify=str(tls_files["good"].ca_cert))
        assert events[-1][0] == "highstate-finish"


def test_tls_default_verification_fails_cleanly(tls_files, token):
    with _tls_server(tls_files["good"]) as server:
        with pytest.raises(TLSError, match="TLS verification") as info:
            run(server, token, sslverify=True)
        assert info.value.exit_code == ExitCode.CONNECTION


def test_tls_certificate_for_another_name(tls_files, token):
    with _tls_server(tls_files["other"]) as server:
        with pytest.raises(TLSError):
            run(server, token, sslverify=str(tls_files["other"].ca_cert))


def test_check_token(fake_server, token):
    fake_server.then(content_type="text/plain", chunks=[b"Auth OK"])
    assert check_token(fake_server.url, token, sslverify=False) is True
    fake_server.then(status=401, content_type="text/html", chunks=[b"no"])
    with pytest.raises(TokenRejected):
        check_token(fake_server.url, token, sslverify=False)
    assert fake_server.received[0].method == "GET"


def test_token_never_logged_even_at_debug(fake_server, token, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    run(fake_server, token)
    fake_server.then(status=401, content_type="text/html", chunks=[b"no"])
    with pytest.raises(TokenRejected) as info:
        run(fake_server, token)
    assert caplog.records  # urllib3 did log at debug level
    assert token not in caplog.text and token not in repr(info.value)


def test_plain_http_body_limit_is_explained(fake_server, token, monkeypatch):
    # SpiroFS over plain HTTP caps bodies at 100 MB (Tornado's default); the
    # limit is lowered here so the test needs no 100 MB upload.
    monkeypatch.setattr(client, "PLAIN_HTTP_BODY_LIMIT", 100)
    fake_server.then(status=400, content_type="text/html", chunks=[b"<title>400: Bad Request</title>"])
    with pytest.raises(BundleRejected, match="over plain HTTP SpiroFS accepts at most 100 MB.*use HTTPS"):
        run(fake_server, token)
    fake_server.then(close_before_body=True)
    with pytest.raises(ConnectError, match="use HTTPS"):
        list(upload(fake_server.url, token, io.BytesIO(b"\0" * (8 << 20)), "proj", "prod",
                    sslverify=False, connect_retries=0))


def test_deadline_ends_a_tls_stream_kept_alive_by_comments(tls_files, token):
    import time

    with _tls_server(tls_files["good"]) as server:
        server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})],
                    comment_every=0.1, comment_for=10)
        started = time.monotonic()
        with pytest.raises(StreamTimeout, match="deadline"):
            run(server, token, sslverify=str(tls_files["good"].ca_cert), deadline=1.0)
        assert time.monotonic() - started < 3


def test_events_held_by_the_caller_are_not_silence(fake_server, token):
    import time

    # The caller spends longer than the read timeout on each event: that is
    # the caller's time, not the server's silence.
    fake_server.then(chunks=[b"".join(highstate_events())])
    got = []
    for event, _ in upload(fake_server.url, token, small_tar(), "proj", "prod", sslverify=False,
                           connect_retries=0, read_timeout=0.3):
        got.append(event)
        time.sleep(0.5)
    # Every event, not a timeout after the first: 2.5 s of the caller's time in all.
    assert got == ["deploy-bundle", "highstate-calc", "highstate-start", "highstate-update",
                   "highstate-finish"]


def test_the_session_works_with_urllib3_1_26(monkeypatch):
    # Debian 12's urllib3 (the container image's) has no ``blocksize``: a pool
    # made with it fails on the first request with a TypeError.
    import urllib3

    monkeypatch.setattr(urllib3, "__version__", "1.26.12")
    session = client._session()
    adapter = session.get_adapter("https://salt:4510/")
    assert "blocksize" not in adapter.poolmanager.connection_pool_kw
    monkeypatch.setattr(urllib3, "__version__", "2.2.3")
    adapter = client._session().get_adapter("https://salt:4510/")
    assert adapter.poolmanager.connection_pool_kw["blocksize"] == client._CHUNK
