import sys

from locality.interrupts import install

install()  # before the imports (most of a second): a signal during them is exit 130, never a kill or a traceback
try:
    from locality.cli import main
except KeyboardInterrupt:
    sys.stderr.write("locality: interrupted\n")
    sys.exit(130)

main()
