"""The event-stream parser against the WHATWG rules, whatever the chunking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spirodeploy.sse import EventStreamParser, ServerSentEvent, iter_events


def parse(*chunks: bytes) -> list[tuple[str, str]]:
    return [(e.event, e.data) for e in iter_events(chunks)]


def test_event_and_data_fields():
    assert parse(b"event: deploy-bundle\ndata: {\"msg\": \"x\"}\n\n") == [
        ("deploy-bundle", '{"msg": "x"}')]


def test_multiline_data_joined_with_newlines():
    assert parse(b"data: a\ndata: b\ndata\n\n") == [("message", "a\nb\n")]


def test_all_three_line_ends():
    assert parse(b"data: a\r\rdata: b\n\ndata: c\r\n\r\n") == [
        ("message", "a"), ("message", "b"), ("message", "c")]


def test_crlf_split_across_chunks_is_one_line_end():
    # requests' iter_lines sees an empty line here and dispatches early.
    assert parse(b"event: x\r", b"\ndata: 1\r", b"\n\r", b"\n") == [("x", "1")]


def test_comments_unknown_fields_and_space_rules():
    stream = b": keepalive\nfoo: bar\nevent:tight\ndata:  two spaces\nretry: 10\n\n"
    assert parse(stream) == [("tight", " two spaces")]


def test_leading_bom_is_ignored_once():
    assert parse(b"\xef\xbb\xbfdata: a\n\n") == [("message", "a")]
    assert parse(b"\xef\xbb\xbf", b"\xef\xbb\xbfdata: a\n\n") == []  # second BOM is a field name


def test_event_without_data_is_not_dispatched_and_type_resets():
    assert parse(b"event: lonely\n\ndata: x\n\n") == [("message", "x")]


def test_unterminated_event_is_dropped_and_flagged():
    parser = EventStreamParser()
    assert parser.feed(b"data: done\n\ndata: half") == [ServerSentEvent("message", "done")]
    assert parser.close() == []
    assert parser.incomplete


def test_multibyte_character_split_across_chunks():
    data = "data: h\u00e9llo \u2603\n\n".encode()
    assert parse(data[:9], data[9:10], data[10:]) == [("message", "h\u00e9llo \u2603")]


def test_large_line_in_many_chunks_is_linear():
    payload = b"x" * (8 * 1024 * 1024)
    chunks = [b"data: "] + [payload[i:i + 4096] for i in range(0, len(payload), 4096)] + [b"\n\n"]
    (event,) = parse(*chunks)
    assert len(event[1]) == len(payload)


VALID_STREAM = st.lists(
    st.tuples(
        st.sampled_from(["", "deploy-bundle", "highstate-update", "ünïcode"]),
        st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n\x00",
                                                blacklist_categories=("Cs",)), max_size=20),
                 min_size=1, max_size=3),
        st.sampled_from(["\n", "\r", "\r\n"]),
    ),
    max_size=6,
)


def _encode(events) -> tuple[bytes, list[tuple[str, str]]]:
    out, expected = [], []
    for event, lines, eol in events:
        if event:
            out.append(f"event: {event}{eol}")
        out.extend(f"data: {line}{eol}" for line in lines)
        out.append(eol)
        expected.append((event or "message", "\n".join(lines)))
    return "".join(out).encode(), expected


@settings(max_examples=200, deadline=None)
@given(VALID_STREAM, st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_chunking_gives_the_same_events(events, cuts):
    data, expected = _encode(events)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=True)]
    assert parse(*chunks) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_arbitrary_bytes_never_crash(chunks):
    parser = EventStreamParser()
    for chunk in chunks:
        for event in parser.feed(chunk):
            assert isinstance(event.data, str)
    parser.close()


def test_keepalives_do_not_move_activity_but_event_data_does():
    parser = EventStreamParser()
    for keepalive in (b": keep-alive\n", b":\n", b"\n", b"\r\n", b": partial comm", b"ent\n"):
        assert parser.feed(keepalive) == []
    assert parser.activity == 0
    parser.feed(b"event: deploy-bundle\n")  # a field with no data yet
    assert parser.activity == 0
    parser.feed(b"data: {\"ms")  # half a data line: the event is arriving
    first = parser.activity
    assert first > 0
    parser.feed(b"g\": \"x\"}\n")
    second = parser.activity
    assert second > first
    assert [e.event for e in parser.feed(b"\n")] == ["deploy-bundle"]
    assert parser.activity > second


# Bytes that exercise every branch: line ends, split CRLFs, BOM pieces,
# comments, fields, invalid and multi-byte UTF-8, NUL in an id.
STREAM_BYTES = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\xef", b"\xbb", b"\xbf", b"\xef\xbb\xbf", b":",
                     b" ", b"data", b"event", b"id", b"retry", b"x", b"\xe2\x98", b"\x83",
                     b"\x00", b"\xff"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(STREAM_BYTES, st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_same_events_and_state_as_the_text_parser(data, cuts):
    # The byte parser replaced a text parser for speed; on any input, cut
    # anywhere, it must say exactly what the old one said.
    from tests.sse_reference import ReferenceParser

    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=True)]
    new, old = EventStreamParser(), ReferenceParser()
    for chunk in chunks:
        assert [(e.event, e.data, e.id) for e in new.feed(chunk)] == old.feed(chunk)
    assert [(e.event, e.data, e.id) for e in new.close()] == old.close()
    assert new.incomplete == old.incomplete
