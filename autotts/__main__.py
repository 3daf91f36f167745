"""`python -m autotts` and the `autotts` console command (pyproject.toml). A plain `eval`
(autotts/evalcli.py: only known options, values click accepts) runs without importing typer,
~30 ms of a one-store run; everything else, help and errors included, goes to the typer app
(autotts/cli.py)."""

import os
import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["eval"] and not any(k.endswith("_COMPLETE") for k in os.environ):
        import gc

        collecting = gc.isenabled()
        gc.disable()  # from the first import on, until the evaluation starts: evalcli.pause_gc
        from autotts import evalcli

        kwargs = evalcli.plain_eval_args(args[1:])
        if kwargs is not None:
            evalcli.pause_gc(collecting)
            evalcli.run_plain(kwargs)
            return
        if collecting:
            gc.enable()
    from autotts.cli import main as cli_main

    cli_main()


if __name__ == "__main__":  # engines that spawn workers re-import the main module
    main()
