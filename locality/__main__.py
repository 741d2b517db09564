import signal
import sys


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# Before the imports (a second of them at start-up): SIGTERM stops like Ctrl-C, exit 130, never a bare kill.
signal.signal(signal.SIGTERM, _stop)
try:
    from locality.cli import main
except KeyboardInterrupt:
    sys.stderr.write("locality: interrupted\n")
    sys.exit(130)

main()
