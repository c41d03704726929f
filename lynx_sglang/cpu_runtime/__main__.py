"""`python -m lynx_sglang.cpu_runtime install|uninstall|status`."""

import sys

from lynx_sglang import cpu_runtime


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "install":
        print(f"CPU runtime glue enabled: {cpu_runtime.install()}")
    elif command == "uninstall":
        cpu_runtime.uninstall()
        print("CPU runtime glue removed")
    elif command == "status":
        print("enabled" if cpu_runtime.is_installed() else "not enabled")
    else:
        print(f"unknown command {command!r}; expected install, uninstall or status", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
