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

        # No collection during these imports (rich's; numpy's come later): what they allocate
        # lives until exit. evalcli.settle_process then pauses collection until the evaluation
        # starts.
        collecting = gc.isenabled()
        gc.disable()
        from autotts import evalcli

        if collecting:
            gc.enable()

        kwargs = evalcli.plain_eval_args(args[1:])
        if kwargs is not None:
            evalcli.run_plain(kwargs)
            return
    from autotts.cli import main as cli_main

    cli_main()


if __name__ == "__main__":  # engines that spawn workers re-import the main module
    main()
