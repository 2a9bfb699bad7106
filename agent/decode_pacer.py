"""Which frames a live camera decodes: those the pipeline may judge, not every frame it delivers.

A live source (a device, a stream, a recording played in real time) delivers frames at its own rate, and the
pipeline takes the newest when it is ready for another: a 30 fps camera beside a model judging 7 frames a
second throws three frames in four away. Decoding and resizing them costs the cores a model without a GPU
runs on. So the camera thread grabs every frame (the driver's queue stays drained, and the frame grabbed is
the newest) and decodes one when

- its slot is empty: the pipeline took the last one, and a frame must be ready whenever it comes back; or
- the pipeline is expected back within WINDOW frame periods: the frame it takes is then at most about one
  frame period old, as when every frame was decoded.

The pipeline's return is expected one take period (its mean time between takes from this camera) after its
last take. A pipeline that keeps up with the camera takes each frame as it comes, and every frame is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

# How many frame periods before the pipeline's expected take frames are decoded again: a little more than one,
# so that a take a little early still finds a fresh frame, and a frame is decoded and resized before it.
WINDOW = 1.5
# Weight of the newest interval in the running means (frame period, take period).
WEIGHT = 0.2


def _mean(current: float | None, sample: float) -> float:
    return sample if current is None else current + WEIGHT * (sample - current)


@dataclass
class DecodePacer:
    frame_s: float | None = None  # mean time between frames grabbed
    take_s: float | None = None  # mean time between frames the pipeline took
    last_grab: float | None = None
    last_take: float | None = None

    def taken(self, now: float) -> None:
        """The pipeline took a frame (monotonic seconds)."""
        if self.last_take is not None:
            self.take_s = _mean(self.take_s, now - self.last_take)
        self.last_take = now

    def grabbed(self, now: float, slot_empty: bool) -> bool:
        """A frame was grabbed at `now`: whether to decode it."""
        if self.last_grab is not None:
            self.frame_s = _mean(self.frame_s, now - self.last_grab)
        self.last_grab = now
        if slot_empty or self.frame_s is None or self.take_s is None or self.last_take is None:
            return True
        return now + WINDOW * self.frame_s >= self.last_take + self.take_s
