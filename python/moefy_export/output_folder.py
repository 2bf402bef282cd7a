"""The pipeline folder is written in a temporary folder beside `-o` and renamed into place at the end; the temporary
folder goes on any error, Ctrl-C (SIGINT) and SIGTERM. An existing `-o` is only replaced when it is an earlier
pipeline folder (or empty): a folder of other files is refused, never overwritten."""
import os
import shutil
import signal

from .errors import UserError

MANIFEST = 'moefy-pipeline.json'


class Terminated(Exception):
    """SIGTERM, raised in the main thread so that the cleanup runs as for Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated()


def check_target(out: str) -> None:
    """Refuses an `-o` that cannot become the pipeline folder, before any slow work."""
    out = os.path.abspath(out)
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            raise UserError(f'-o {out}: exists and is not a folder')
        if os.listdir(out) and not os.path.isfile(os.path.join(out, MANIFEST)):
            raise UserError(f'-o {out}: a folder with other files in it (not a pipeline folder): choose another -o')
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise UserError(f'-o {out}: its folder {parent} does not exist')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f'-o {out}: cannot write in {parent}')


def free_bytes(out: str) -> int:
    st = os.statvfs(os.path.dirname(os.path.abspath(out)))
    return st.f_bavail * st.f_frsize


class OutputFolder:
    """with OutputFolder(out) as tmp: write into tmp; on a normal exit tmp becomes `out`."""

    def __init__(self, out: str):
        self.out = os.path.abspath(out)
        parent, name = os.path.split(self.out)
        self.tmp = os.path.join(parent, f'.{name}.moefy-export-{os.getpid()}')
        self.old = os.path.join(parent, f'.{name}.moefy-export-old-{os.getpid()}')

    def __enter__(self) -> str:
        self.previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        os.mkdir(self.tmp)
        return self.tmp

    def __exit__(self, kind, value, tb):
        try:
            if kind is None:
                self._publish()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            signal.signal(signal.SIGTERM, self.previous_sigterm)
        return False

    def _publish(self):
        # an interruption between the renames leaves the previous folder under .old: put it back
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            replaced = os.path.lexists(self.out)
            if replaced:
                os.rename(self.out, self.old)
            try:
                os.rename(self.tmp, self.out)
            except BaseException:
                if replaced:
                    os.rename(self.old, self.out)
                raise
            if replaced:
                shutil.rmtree(self.old, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old_int)
