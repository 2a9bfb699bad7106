"""Which frames a live camera decodes, on a simulated clock: a camera at a fixed rate and a pipeline taking
frames at its own (the camera-level test on a real recording is in test_agent_camera.py)."""

from __future__ import annotations

from agent.decode_pacer import WINDOW, DecodePacer

FRAME = 1 / 30  # a 30 fps camera


def simulate(take_every: float | None, frames: int = 300):
    """Returns (decoded frame numbers, [(take time, age of the frame taken)]). The pipeline comes back every
    `take_every` seconds and takes the slot's frame if there is one; None: it never takes."""
    pacer, slot, decoded, takes = DecodePacer(), None, [], []
    next_take = take_every * 0.5 if take_every else None
    for k in range(frames):
        now = k * FRAME
        while next_take is not None and next_take < now:
            if slot is not None:
                takes.append((next_take, next_take - slot))
                pacer.taken(next_take)
                slot = None
            next_take += take_every
        if pacer.grabbed(now, slot is None):
            decoded.append(k)
            slot = now
    return decoded, takes


def test_a_pipeline_that_keeps_up_has_every_frame_decoded():
    decoded, takes = simulate(take_every=FRAME)
    assert decoded == list(range(300)) and len(takes) >= 298


def test_a_slow_pipeline_has_few_frames_decoded_and_takes_fresh_ones():
    take_every = 4.3 * FRAME  # a model at 7 frames/s
    decoded, takes = simulate(take_every)
    settled = takes[5:]
    # Per take: the frame after it (the slot is never empty when the pipeline comes), and those within the
    # window before the next: about WINDOW + 1 of the 4.3 delivered.
    per_take = len(decoded) / len(takes)
    assert 1.0 < per_take <= WINDOW + 1.5 < 4.3
    assert len(takes) >= 65  # no take came back empty-handed
    assert max(age for _, age in settled) <= FRAME * 1.01  # never older than one frame period


def test_a_pipeline_that_stops_taking_leaves_every_frame_decoded_once_it_is_overdue():
    pacer = DecodePacer()
    for k in range(20):  # a steady pipeline: a take every fourth frame
        if k % 4 == 0:
            pacer.taken(k * FRAME)
        pacer.grabbed(k * FRAME + 0.001, slot_empty=False)
    late = [pacer.grabbed(k * FRAME + 0.001, slot_empty=False) for k in range(20, 40)]
    assert all(late[2:])  # expected back long ago: every frame is decoded, so the newest is ready
