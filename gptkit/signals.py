"""Stopping a run cleanly: the first Ctrl-C or SIGTERM finishes the step in flight, saves, and stops."""
import signal


class TrainingStopped(Exception):
    """Raised after a SIGTERM or first Ctrl-C, once the step in flight is done and a checkpoint is saved."""

    def __init__(self, signal_name, step):
        super().__init__(signal_name, step)
        self.signal_name, self.step = signal_name, step


class StopSignals:
    """The first SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the current step; a second SIGINT quits at once."""

    def __init__(self):
        self.requested, self.previous = None, {}

    def __enter__(self):
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            self.previous = {}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: finishing this step and saving a checkpoint (Ctrl-C again quits at once)", flush=True)
