"""SpiroFS tokens (spirodeploy.tokens): the macaroon v1 format, cross-checked
against pymacaroons (what SpiroFS makes its tokens with); folding caveats the
way the server checks them, against a model of the server's rule; narrowing;
the ``spiro-token`` command; the Salt functions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pymacaroons
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymacaroons.exceptions import MacaroonInvalidSignatureException

from spirodeploy import tokens
from spirodeploy.checks import check_token_scope, token_caveats
from spirodeploy.errors import ExitCode, TokenExpired, TokenNotAllowed, UsageError
from spirodeploy.token_cli import main
from tests.saltloader_support import load_salt_file
from tests.support import REPO, make_token

KEY = "server-secret-key"
NOW = 1_800_000_000.0
PROJECTS = ["a", "b", "c", "d"]

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_tokens")
spirorunner = load_salt_file("runners", "salt_ext_spirodeploy_runner_tokens")


def server_accepts(caveat_ids, project, now) -> bool:
    """Our model of SpiroFS 0.3's rule (read from spirofs/utils/spiro_auth.py,
    not copied): each first-party caveat is a JSON object and every entry in
    it must hold; an unknown key, a caveat that is not a JSON object, or a
    comparison that fails with a type error refuses the token."""
    for cid in caveat_ids:
        try:
            entries = json.loads(cid).items()
        except (ValueError, AttributeError):
            return False
        for key, arg in entries:
            try:
                if key == "not_before":
                    ok = now > arg
                elif key == "not_after":
                    ok = now < arg
                elif key == "project_allow":
                    ok = project in arg
                elif key == "project_deny":
                    ok = project not in arg
                else:
                    ok = False
            except TypeError:
                return False
            if not ok:
                return False
    return True


def real_token(*caveats: str | dict, identifier: str = "ident") -> str:
    """A token made the way SpiroFS makes them (pymacaroons, v1, with a key)."""
    macaroon = pymacaroons.Macaroon(identifier=identifier, key=KEY, location="")
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat if isinstance(caveat, str) else json.dumps(caveat))
    return macaroon.serialize()


def server_verifies(token: str, project: str, now: float) -> bool:
    """pymacaroons' verifier with the key, our model of the rule as the predicate:
    what the server would answer (signature chain included)."""
    verifier = pymacaroons.Verifier()
    verifier.satisfy_general(lambda predicate: server_accepts([predicate], project, now))
    try:
        return verifier.verify(pymacaroons.Macaroon.deserialize(token), KEY)
    except MacaroonInvalidSignatureException:
        return False


# --- the binary format, against pymacaroons -------------------------------------

caveat_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


# pymacaroons writes the length of a non-ASCII identifier or location in
# characters, not bytes (a broken packet); SpiroFS's are ASCII.
ascii_text = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=40)


@settings(max_examples=150, deadline=None)
@given(identifier=ascii_text.filter(bool), location=ascii_text,
       caveats=st.lists(caveat_texts, max_size=5),
       third_party=st.booleans(), extra=caveat_texts)
def test_format_matches_pymacaroons(identifier, location, caveats, third_party, extra):
    macaroon = pymacaroons.Macaroon(identifier=identifier, key=KEY, location=location)
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat)
    if third_party:
        macaroon.add_third_party_caveat("https://elsewhere/", "other-key", "tp-id")
    serialized = macaroon.serialize()

    ours = tokens.Macaroon.parse(serialized)
    assert ours.identifier == identifier.encode()
    assert ours.location == location.encode()
    assert [c.cid for c in ours.caveats if c.first_party] == [c.encode() for c in caveats]
    assert ours.serialize() == serialized  # the same bytes back
    # Adding a caveat gives exactly pymacaroons' token (same signature chain).
    macaroon.add_first_party_caveat(extra)
    assert ours.add_first_party_caveat(extra).serialize() == macaroon.serialize()


def test_a_caveat_added_without_the_key_verifies_with_it():
    token = real_token({"not_before": NOW - 10, "project_allow": ["a", "b"]})
    narrowed = tokens.Macaroon.parse(token).add_first_party_caveat('{"project_allow": ["a"]}')
    assert server_verifies(narrowed.serialize(), "a", NOW)
    assert not server_verifies(narrowed.serialize(), "b", NOW)
    # A caveat taken off again does not verify: the signature chains over it.
    stripped = tokens.Macaroon(narrowed.location, narrowed.identifier, narrowed.caveats[:1],
                               narrowed.signature)
    assert not server_verifies(stripped.serialize(), "b", NOW)


def test_standard_base64_and_padding_are_read_too():
    token = real_token({"project_allow": ["a"]})
    standard = token.replace("-", "+").replace("_", "/") + "=" * (-len(token) % 4)
    assert tokens.read_scope(standard).projects == {"a"}


def _b64(raw: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


GOOD_RAW = tokens.Macaroon.parse(real_token({"not_before": 1})).to_bytes()


@pytest.mark.parametrize("token", [
    "", "not a macaroon!", "abc", _b64(b"hello world, not packets"),
    _b64(GOOD_RAW[:-5]),                                   # cut short
    _b64(GOOD_RAW.replace(b"identifier", b"identifiex")),  # unknown packet
    _b64(GOOD_RAW[GOOD_RAW.index(b"identifier") - 4:]),    # no location packet
    _b64(b"\x02" + GOOD_RAW),                              # version 2
    _b64(GOOD_RAW[:-38] + b"0018signature shortsig\n"),    # signature not 32 bytes
])
def test_what_is_not_a_macaroon_is_refused(token):
    with pytest.raises(tokens.NotAMacaroon, match="macaroon") as info:
        tokens.Macaroon.parse(token)
    assert info.value.exit_code == ExitCode.USAGE
    assert "\n" not in info.value.message
    if len(token) >= 8:
        assert token not in info.value.message


# --- folding caveats: a later caveat never widens an earlier one ------------------

def test_a_later_wider_project_allow_does_not_widen_the_token():
    token = real_token({"project_allow": ["a"]}, {"project_allow": ["a", "b"]})
    assert token_caveats(token)["project_allow"] == ["a"]
    with pytest.raises(TokenNotAllowed, match="'b'"):
        check_token_scope(token, "b", now=NOW)
    assert check_token_scope(token, "a", now=NOW).warnings == []


def test_an_earlier_shorter_expiry_is_not_hidden_by_a_later_longer_one():
    token = real_token({"not_after": NOW - 1}, {"not_after": NOW + 3600})
    assert token_caveats(token)["not_after"] == NOW - 1
    with pytest.raises(TokenExpired, match="expired"):
        check_token_scope(token, "a", now=NOW)


def test_latest_not_before_and_every_project_deny_count():
    token = real_token({"not_before": NOW - 10_000, "project_deny": ["a"]},
                       {"not_before": NOW + 10_000, "project_deny": ["b"]})
    assert tokens.read_scope(token).denied == {"a", "b"}
    with pytest.raises(TokenExpired, match="not valid before"):
        check_token_scope(token, "c", now=NOW)
    with pytest.raises(TokenNotAllowed):
        check_token_scope(token, "a", now=NOW + 20_000)
    with pytest.raises(TokenNotAllowed):
        check_token_scope(token, "b", now=NOW + 20_000)


@pytest.mark.parametrize("caveat, why", [
    ({"project_allow": ["a"], "ip": "10.0.0.1"}, "does not understand: 'ip'"),
    ("not json at all", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ({"project_allow": "abc"}, "'project_allow'"),   # the server would match substrings
    ({"not_after": "tomorrow"}, "'not_after'"),
])
def test_a_caveat_the_client_does_not_understand_is_a_warning(caveat, why):
    scope = check_token_scope(real_token({"not_before": NOW - 5}, caveat), "a", now=NOW)
    assert not scope.judged
    assert len(scope.warnings) == 1 and "cannot judge the token" in scope.warnings[0]
    assert why in scope.warnings[0]


def test_a_third_party_caveat_is_a_warning():
    macaroon = pymacaroons.Macaroon(identifier="i", key=KEY, location="")
    macaroon.add_third_party_caveat("https://auth.example/", "k", "tp")
    scope = check_token_scope(macaroon.serialize(), "a", now=NOW)
    assert "third-party" in scope.warnings[0]


def test_an_unreadable_token_is_a_warning_for_the_deploy_not_a_silent_pass():
    scope = check_token_scope("not-a-macaroon!", "web")
    assert scope.warnings and "cannot judge the token" in scope.warnings[0]


def test_the_understood_part_of_a_caveat_still_refuses():
    token = real_token({"project_allow": ["a"], "future_key": 1})
    with pytest.raises(TokenNotAllowed):
        check_token_scope(token, "b", now=NOW)


times = st.sampled_from([-10_000, -301, -300, -1, 0, 1, 299, 300, 10_000]).map(lambda d: NOW + d)
projects = st.lists(st.sampled_from(PROJECTS), max_size=4, unique=True)
understood = st.fixed_dictionaries({}, optional={
    "not_before": times, "not_after": times, "project_allow": projects, "project_deny": projects,
}).map(json.dumps)
not_understood = st.one_of(
    st.just("junk"), st.just("[]"), st.just("null"), st.just('"a"'),
    st.fixed_dictionaries({"x": st.integers()}).map(json.dumps),
    st.sampled_from(["a", "ab", "abcd"]).map(lambda s: json.dumps({"project_allow": s})),
    st.sampled_from([True, "soon", None, [1]]).map(lambda v: json.dumps({"not_after": v})),
    st.just('{"not_before": NaN}'),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(caveats=st.lists(st.tuples(st.booleans(), understood, not_understood), max_size=5),
       project=st.sampled_from(PROJECTS), now=times)
def test_folded_caveats_agree_with_the_servers_rule(caveats, project, now):
    chosen = [good if pick else bad for pick, good, bad in caveats]
    all_understood = all(pick for pick, _, _ in caveats)
    token = make_token(chosen)
    scope = tokens.read_scope(token)
    server = server_accepts(chosen, project, now)

    # The client never refuses what the server accepts ...
    if server:
        assert scope.allows(project, now)
        check_token_scope(token, project, now=now)
    # ... and when it understood everything, it says exactly what the server does.
    assert scope.judged == all_understood
    if all_understood:
        assert scope.allows(project, now) == server
    # Whatever it refuses, the server refuses too; and when it understood
    # everything it refuses whatever the server would refuse even with the
    # clocks CLOCK_SKEW apart on not_before.
    try:
        check_token_scope(token, project, now=now)
        refused = False
    except (TokenExpired, TokenNotAllowed):
        refused = True
        assert not server
    if all_understood:
        assert refused == (not server_accepts(skew_not_before(chosen), project, now))


def skew_not_before(caveat_ids):
    """The caveats with every not_before CLOCK_SKEW seconds earlier."""
    out = []
    for cid in caveat_ids:
        conditions = json.loads(cid)
        if "not_before" in conditions:
            conditions["not_before"] -= tokens.CLOCK_SKEW
        out.append(json.dumps(conditions))
    return out


@settings(max_examples=60, deadline=None)
@given(caveats=st.lists(understood, min_size=1, max_size=3), project=st.sampled_from(PROJECTS),
       now=times)
def test_folded_caveats_agree_with_pymacaroons_verifying_real_tokens(caveats, project, now):
    token = real_token(*caveats)
    assert tokens.read_scope(token).allows(project, now) == server_verifies(token, project, now)


# --- narrowing -------------------------------------------------------------------

def test_narrow_makes_a_token_the_server_accepts_only_for_its_projects_and_lifetime():
    root = real_token({"not_before": NOW - 100})
    narrowed = tokens.narrow(root, ["a", "b"], "15m", now=NOW)
    assert narrowed.projects == ["a", "b"] and narrowed.not_after == NOW + 900
    assert server_verifies(narrowed.token, "a", NOW + 1)
    assert server_verifies(narrowed.token, "b", NOW + 1)
    assert not server_verifies(narrowed.token, "c", NOW + 1)
    assert not server_verifies(narrowed.token, "a", NOW + 901)
    assert "narrowed" not in repr(narrowed) and narrowed.token not in repr(narrowed)


def test_narrowing_twice_intersects():
    once = tokens.narrow(real_token({"not_before": NOW - 100}), ["a", "b"], "1h", now=NOW).token
    twice = tokens.narrow(once, ["a"], "10m", now=NOW).token
    scope = tokens.read_scope(twice)
    assert scope.projects == {"a"} and scope.not_after == NOW + 600
    assert not server_verifies(twice, "b", NOW + 1) and server_verifies(twice, "a", NOW + 1)


def test_not_before_delays_the_window():
    narrowed = tokens.narrow(real_token(), ["a"], "10m", not_before="2027-01-01T00:00:00Z", now=NOW)
    start = 1798761600
    assert (narrowed.not_before, narrowed.not_after) == (start, start + 600)
    assert not server_verifies(narrowed.token, "a", start - 1)
    assert server_verifies(narrowed.token, "a", start + 1)


@pytest.mark.parametrize("source, projects, match", [
    ({"project_allow": ["a"]}, ["b"], "you cannot widen a token"),
    ({"project_deny": ["b"]}, ["a", "b"], "you cannot widen a token"),
    ({"not_after": NOW - 1}, ["a"], "expired"),
    ({"not_after": NOW + 10}, [], "at least one project"),
    ({"project_allow": ["a"]}, ["../x"], "project name"),
])
def test_narrowing_refuses(source, projects, match):
    with pytest.raises(UsageError, match=match):
        tokens.narrow(real_token(source), projects, "5m", now=NOW)


def test_a_lifetime_beyond_the_tokens_expiry_is_a_warning():
    narrowed = tokens.narrow(real_token({"not_after": NOW + 60}), ["a"], "1h", now=NOW)
    assert narrowed.not_after == NOW + 60
    assert "expires then too" in narrowed.warnings[0]
    with pytest.raises(UsageError, match="never be valid"):
        tokens.narrow(real_token({"not_after": NOW + 60}), ["a"], "1h",
                      not_before=NOW + 120, now=NOW)


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("45", 45), (" 1.5h ", 5400),
    (10, 10),
])
def test_lifetimes(text, seconds):
    assert tokens.parse_lifetime(text) == seconds


@pytest.mark.parametrize("text, match", [
    ("0", "more than 0"), ("0m", "more than 0"), ("-5m", "negative"), (-3, "more than 0"),
    ("5x", "cannot read"), ("", "cannot read"), ("m", "cannot read"), ("1e9", "cannot read"),
    (True, "cannot read"),
])
def test_bad_lifetimes(text, match):
    with pytest.raises(UsageError, match=match):
        tokens.parse_lifetime(text)


def test_times():
    assert tokens.parse_time("2027-01-01T00:00:00Z") == 1798761600
    assert tokens.parse_time("2027-01-01 01:00+01:00") == 1798761600
    assert tokens.parse_time("2027-01-01T00:00") == 1798761600  # no zone: UTC
    assert tokens.parse_time("1798761600") == 1798761600
    for bad in ("tomorrow", "inf", "nan", float("nan")):
        with pytest.raises(UsageError, match="cannot read time"):
            tokens.parse_time(bad)


def test_inspect_never_shows_the_token():
    token = tokens.narrow(real_token({"not_before": NOW - 100}), ["a"], "15m", now=NOW).token
    info = tokens.inspect(token, now=NOW)
    assert info["projects"] == ["a"] and info["valid"] and not info["expired"]
    assert info["expires"] == "2027-01-15T08:15:00Z" and len(info["caveats"]) == 2
    text = json.dumps(info) + "\n".join(tokens.describe(info, now=NOW))
    assert token not in text and "ident" not in text
    assert "valid until: 2027-01-15 08:15:00 UTC (in 15m)" in tokens.describe(info, now=NOW)


# --- spiro-token ----------------------------------------------------------------

@pytest.fixture
def spiro_token(monkeypatch, capsys):
    """Run token_cli.main with SPIRO_TOKEN set; return (code, out, err)."""
    for name in ("SPIRO_TOKEN_FILE", "SPIRO_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPIRO_TOKEN", real_token({"not_before": 1, "project_allow": ["a", "b"]}))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_narrow_prints_a_narrowed_token(spiro_token):
    code, out, err = spiro_token("narrow", "--project", "a", "--lifetime", "15m")
    assert code == 0, err
    token = out.strip()
    assert server_verifies(token, "a", time.time()) and not server_verifies(token, "b", time.time())


def test_cli_output_is_written_owner_only(spiro_token, tmp_path):
    target = tmp_path / "job.token"
    target.write_text("old")
    target.chmod(0o644)
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        code, out, err = spiro_token("narrow", "--project", "b", "--lifetime", "10m",
                                     "--output", str(target))
    finally:
        os.umask(old_umask)
    assert code == 0, err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert out == "" and str(target) in err
    assert tokens.read_scope(target.read_text().strip()).projects == {"b"}
    assert [p.name for p in tmp_path.iterdir()] == ["job.token"]  # no temporary file left


def test_cli_inspect_shows_scope_and_never_the_token(spiro_token, monkeypatch):
    code, out, _ = spiro_token("inspect")
    assert code == 0 and "projects:    a, b" in out and "valid until: (no expiry)" in out
    assert os.environ["SPIRO_TOKEN"] not in out
    code, out, _ = spiro_token("inspect", "--json")
    assert json.loads(out)["projects"] == ["a", "b"]


def test_cli_source_token_from_a_token_file(spiro_token, tmp_path):
    source = tmp_path / "broad.token"
    source.write_text(real_token({"project_allow": ["zzz"]}) + "\n")
    code, out, err = spiro_token("--token-file", str(source), "inspect")
    assert code == 0 and "projects:    zzz" in out, err
    code, out, err = spiro_token("inspect", "--token-file", str(source))
    assert code == 0 and "projects:    zzz" in out, err


@pytest.mark.parametrize("args, message", [
    (["--token", "definitely-not-a-token", "inspect"], "is not a macaroon"),
    (["narrow", "--project", "a", "--lifetime", "0"], "more than 0"),
    (["narrow", "--project", "a", "--lifetime=-5m"], "negative"),
    (["narrow", "--project", "a", "--lifetime", "-300"], "negative"),
    (["narrow", "--project", "a", "--lifetime", "soon"], "cannot read lifetime"),
    (["narrow", "--project", "c", "--lifetime", "5m"], "you cannot widen a token"),
    (["narrow", "--project", "a", "--lifetime", "5m", "--output", "/nonexistent/dir/t"],
     "cannot write '/nonexistent/dir/t'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(spiro_token, args, message):
    code, out, err = spiro_token(*args)
    assert code == ExitCode.USAGE
    assert out == "" and err.count("\n") == 1 and message in err
    assert err.startswith("spiro-token: error: ")
    assert os.environ["SPIRO_TOKEN"] not in err


def test_cli_unwritable_output_directory(spiro_token, tmp_path):
    if os.geteuid() == 0:
        target = "/proc/version"  # root may write anywhere else
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "t")
    code, _, err = spiro_token("narrow", "--project", "a", "--lifetime", "5m", "--output", target)
    assert code == ExitCode.USAGE and f"cannot write {target!r}" in err


def test_cli_runs_as_a_module_and_spiro_deploy_help_points_to_it():
    proc = subprocess.run([sys.executable, "-m", "spirodeploy.token_cli", "--help"],
                          capture_output=True, text=True, cwd=REPO, check=True)
    assert "narrow" in proc.stdout and "inspect" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "spirodeploy", "--help"],
                          capture_output=True, text=True, cwd=REPO, check=True)
    assert "spiro-token" in proc.stdout


def test_deploy_warns_when_it_cannot_judge_the_token(project, fake_server, monkeypatch, capsys):
    from spirodeploy.cli import main as deploy_main

    monkeypatch.chdir(project)
    monkeypatch.setenv("SPIRO_URL", fake_server.url)
    monkeypatch.setenv("SPIRO_TOKEN", make_token([{"not_before": 1}, {"ip": "10.0.0.1"}]))
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    code = deploy_main(["proj", "prod", "--insecure"])
    _, err = capsys.readouterr()
    assert code == ExitCode.OK
    assert "cannot judge the token" in err and "'ip'" in err


# --- the Salt functions ------------------------------------------------------------

SALT_TOKEN = real_token({"not_before": 1, "project_allow": ["shop", "blog"]})


@pytest.fixture
def configure_loader_modules(tmp_path):
    config = {"spirodeploy:token": SALT_TOKEN}
    return {
        spiromod: {"__opts__": {"id": "build-1"}, "__context__": {},
                   "__salt__": {"config.get": lambda key, default="": config.get(key, default)}},
        spirorunner: {"__opts__": {"spirodeploy": {"token": SALT_TOKEN}}, "__context__": {}},
    }


@pytest.fixture(autouse=True)
def _no_token_environment(monkeypatch):
    for name in ("SPIRO_TOKEN", "SPIRO_TOKEN_FILE", "SPIRO_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("face", [spiromod, spirorunner], ids=["module", "runner"])
def test_salt_narrow_token(face, tmp_path):
    ret = face.narrow_token("shop", "10m")
    assert ret["result"] is True and ret["projects"] == ["shop"] and not ret["warnings"]
    assert abs(ret["not_after"] - (time.time() + 600)) < 5
    assert server_verifies(ret["token"], "shop", time.time())
    assert not server_verifies(ret["token"], "blog", time.time())
    assert SALT_TOKEN not in json.dumps(ret)

    target = tmp_path / "job.token"
    ret = face.narrow_token(["shop", "blog"], "1h", output=str(target))
    assert "token" not in ret and ret["output"] == str(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert tokens.read_scope(target.read_text().strip()).projects == {"shop", "blog"}


@pytest.mark.parametrize("face", [spiromod, spirorunner], ids=["module", "runner"])
def test_salt_narrow_token_refuses_widening_with_retcode_2(face):
    ret = face.narrow_token("other", "10m")
    assert ret["result"] is False and "you cannot widen a token" in ret["error"]
    assert face.__context__["retcode"] == ExitCode.USAGE
    ret = face.narrow_token("shop", "0")
    assert ret["result"] is False and "more than 0" in ret["error"]


@pytest.mark.parametrize("face", [spiromod, spirorunner], ids=["module", "runner"])
def test_salt_inspect_token(face):
    ret = face.inspect_token()
    assert ret["result"] is True and ret["projects"] == ["blog", "shop"]
    assert SALT_TOKEN not in json.dumps(ret)
    ret = face.inspect_token(token="garbage-token")
    assert ret["result"] is False and "not a macaroon" in ret["error"]
    assert face.__context__["retcode"] == ExitCode.USAGE


def test_inspect_of_a_hostile_token_prints_no_control_sequences(monkeypatch, capsys):
    from spirodeploy import token_cli

    # Anyone can add a caveat; one that paints the terminal must show as text.
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    monkeypatch.setenv("SPIRO_TOKEN", make_token([
        {"not_before": 1, "project_allow": ["a\x1b[2J\x1b[32mOK"]},
        "\x1b]52;c;cHduZWQ=\x07",
    ]))
    token_cli.main(["inspect"])
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "\\x1b" in out


def test_bundle_deploy_warns_when_it_cannot_judge_the_token(project, fake_server, monkeypatch,
                                                            capsys, tmp_path):
    import tarfile

    from spirodeploy.cli import main as deploy_main

    bundle = tmp_path / "b.tar"
    with tarfile.open(bundle, "w") as tar:
        tar.add(project / "_salt", arcname=".")
    monkeypatch.setenv("SPIRO_URL", fake_server.url)
    monkeypatch.setenv("SPIRO_TOKEN", make_token([{"not_before": 1}, {"ip": "10.0.0.1"}]))
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    code = deploy_main(["proj", "prod", "--insecure", "--bundle", str(bundle)])
    _, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    assert "cannot judge the token" in err
