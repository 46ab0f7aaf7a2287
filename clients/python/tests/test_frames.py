"""The fixture written by the Rust test ``tests/client_fixtures.rs`` from the real hub: every sample
decodes to its dataclass, and every key the server sends has a field."""

import dataclasses
import json
from pathlib import Path

import pytest

from switchboard_client import Event, FrameError, decode_frame
from switchboard_client.frames import CONTROL

FIXTURE = json.loads((Path(__file__).resolve().parents[2] / "fixtures" / "server-frames.json").read_text())


@pytest.mark.parametrize("wire", FIXTURE["frames"], ids=lambda f: f["type"])
def test_every_sample_decodes_to_its_dataclass_with_every_field(wire):
    frame = decode_frame(json.dumps(wire))
    expected = CONTROL.get(wire["type"], Event)
    assert type(frame) is expected
    names = {f.name for f in dataclasses.fields(expected)}
    sent = set(wire) - {"type"}
    assert sent <= names, f"fields the server sends that {expected.__name__} lacks: {sent - names}"
    if expected is Event:
        assert (frame.kind, frame.seq, frame.epoch) == (wire["type"], wire["seq"], wire["epoch"])


def test_the_fixture_covers_every_control_frame_type():
    assert set(CONTROL) <= {f["type"] for f in FIXTURE["frames"]}


@pytest.mark.parametrize("text", ["nope", "[1]", '{"x":1}', '{"type":"connected"}', '{"type":"agent_started","seq":1}'])
def test_what_is_not_a_frame_is_refused(text):
    with pytest.raises(FrameError):
        decode_frame(text)
