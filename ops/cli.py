"""The `longtake` command."""


def main() -> None:
    raise SystemExit("longtake: no commands yet")
