"""Where a decode step's time goes, without disturbing the step it times.

The loop calls `timer(phase)` at each phase boundary and `timer.end_step()` after each step.
A boundary only drops a mark: `time.perf_counter()` on the CPU, a CUDA event recorded on
the device's own stream on a GPU (`cuda:N` records on N's stream, not the current device's).
No boundary synchronises: events are read after the loop's last synchronise (`resolve`), so
tokens/s from a timed run is the tokens/s of an untimed one, and the phase split costs
nothing on any device.

On a GPU an interval is stream time between two marks: the GPU work queued in that phase,
plus any time the GPU sat idle waiting for the host to launch it. Host work of a phase whose
kernels are still queued behind an earlier phase's lands in that earlier phase: the split
answers "what was the device doing", which is the question a roofline asks.
"""

import time

import numpy as np
import torch


class PhaseTimer:
    """Attributes each step's time to `phases`: the time from one boundary to the next goes to
    the phase the first boundary named. A step's time before its first boundary goes to the
    phase that was running when the previous step ended (`phases[-1]` before the first step)."""

    def __init__(self, device: torch.device, phases: tuple[str, ...]):
        self.phases = phases
        self._events = device.type == "cuda"
        self._stream = torch.cuda.current_stream(device) if self._events else None
        self._marks: list[tuple[str, object]] = []  # (phase that starts here, mark)
        self._steps: list[int] = []  # index into _marks of each step's closing mark
        self._phase = phases[-1]
        self._marks.append((self._phase, self._mark()))

    def _mark(self):
        if not self._events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(self._stream)
        return event

    def __call__(self, phase: str) -> None:
        """End the running phase and start `phase`."""
        if phase not in self.phases:
            raise ValueError(f"unknown phase {phase!r}; known: {', '.join(self.phases)}")
        self._phase = phase
        self._marks.append((phase, self._mark()))

    def end_step(self) -> None:
        """Close the step: the running phase stops here and goes on in the next step."""
        self._marks.append((self._phase, self._mark()))
        self._steps.append(len(self._marks) - 1)

    def resolve(self) -> dict[str, np.ndarray]:
        """phase -> [steps] seconds. Call after the device has finished the loop's work."""
        if self._events:
            self._marks[-1][1].synchronize()
        out = {p: np.zeros(len(self._steps)) for p in self.phases}
        first = 0
        for step, last in enumerate(self._steps):
            for (phase, start), (_, end) in zip(self._marks[first:last], self._marks[first + 1:last + 1], strict=True):
                out[phase][step] += self._seconds(start, end)
            first = last
        return out

    def _seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3 if self._events else end - start
