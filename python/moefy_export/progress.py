"""A line per stage on stderr, `moefy_export: <stage>: <seconds> s`, written when the stage ends. On a terminal the
line shows while the stage runs and is erased if it fails, so that an error is the only line about it."""
import contextlib
import sys
import time


class Stages:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f'moefy_export: {text}', file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def stage(self, text: str):
        line = f'moefy_export: {text}'
        if not self.quiet and self.tty:
            print(f'{line} ...', end='', file=sys.stderr, flush=True)
        t = time.monotonic()
        try:
            yield
        except BaseException:
            if not self.quiet and self.tty:
                print('\r\033[K', end='', file=sys.stderr, flush=True)
            raise
        if not self.quiet:
            print(f'{chr(13) if self.tty else ""}{line}: {time.monotonic() - t:.1f} s\033[K' if self.tty
                  else f'{line}: {time.monotonic() - t:.1f} s', file=sys.stderr, flush=True)

    def total(self) -> float:
        return time.monotonic() - self.started
