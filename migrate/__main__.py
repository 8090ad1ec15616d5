"""The `migrate` command (console script and `python -m migrate`).

It imports the CLI only when it runs: the transform's worker processes are spawned, and a spawned
process imports the main module again, which should cost them nothing (the CLI and all it loads
is about 50 MB a worker)."""


def main() -> None:
    from migrate.malloc import limit_arenas

    limit_arenas()
    from migrate.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
