"""`python -m gnhub` and the `gnhub` command: Ctrl-C while the CLI loads is a clean exit too."""
import sys


def run() -> None:
    try:
        # inside the try: Ctrl-C while the CLI loads exits cleanly
        from .cli import main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
