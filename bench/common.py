"""What the benchmark scripts share: where the release binaries are, running a command, and a
pair of free loopback ports (swtpm takes PORT and PORT + 1)."""
import os, socket, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ci/bench exports where cargo put the binaries (CARGO_TARGET_DIR moves them).
REL = os.path.join(os.environ.get("HWPASS_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
ISSUER, HWPASS = os.path.join(REL, "hwpass-issuer"), os.path.join(REL, "hwpass")


class CommandFailed(RuntimeError):
    """A command that exited non-zero: its message ends with the last 400 characters of its
    stderr; `cmd` and `stderr` keep them whole."""

    def __init__(self, cmd, stderr):
        super().__init__(f"{' '.join(cmd)} failed: {stderr.strip()[-400:]}")
        self.cmd, self.stderr = cmd, stderr


def sh(cmd, env=None, stdin=None, check=True):
    r = subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise CommandFailed(cmd, r.stderr)
    return r


def free_port_pair():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            pass
        finally:
            s.close()
            t.close()
